// Tool calling: templates with tools per family, parsing of each family's call text, and a streamed
// round trip with the official openai client against the real server (stories260K and random weights).

import OpenAI from "openai";
import { z } from "zod";
import { join } from "node:path";
import { assert, assertEquals } from "../helpers/assert.ts";
import { withServerProcess } from "../helpers/server_process.ts";
import { chatTemplateFrom } from "../../engine/model/chat_template.ts";
import type { ChatMessage, ToolDefinition, ToolFormat } from "../../engine/protocol.ts";
import { ToolCallParser, type ToolEvent } from "../../http/tools.ts";
import { makeModel } from "../../tools/make_model.ts";

const Weather = z.object({
  city: z.string(),
  unit: z.enum(["celsius", "fahrenheit"]),
  days: z.number().int().min(1).max(7),
});
const Time = z.object({ zone: z.enum(["UTC", "CET"]) });

const TOOLS: ToolDefinition[] = [
  {
    type: "function",
    function: { name: "get_weather", description: "Weather forecast", parameters: z.toJSONSchema(Weather) },
  },
  { type: "function", function: { name: "get_time", parameters: z.toJSONSchema(Time) } },
];
const SCHEMAS: Record<string, z.ZodType> = { get_weather: Weather, get_time: Time };

const CONVERSATION: ChatMessage[] = [
  { role: "user", content: "Weather in Paris?" },
  {
    role: "assistant",
    content: "",
    tool_calls: [{
      id: "call_1",
      type: "function",
      function: { name: "get_weather", arguments: '{"city":"Paris","unit":"celsius","days":2}' },
    }],
  },
  { role: "tool", tool_call_id: "call_1", content: "sunny, 21" },
];

// Small templates modelled on each family's way of reading tools (not the real ones).
const LLAMA3_STYLE = "{{ bos_token }}{% if tools %}<|start_header_id|>system<|end_header_id|>\n\n" +
  'Call a function by answering {"name": name, "parameters": arguments}.\n' +
  "{% for t in tools %}{{ t | tojson }}\n{% endfor %}<|eot_id|>{% endif %}" +
  "{% for m in messages %}{% if m.role == 'assistant' and m.tool_calls %}" +
  "<|start_header_id|>assistant<|end_header_id|>\n\n{% for c in m.tool_calls %}" +
  '{"name": "{{ c.function.name }}", "parameters": {{ c.function.arguments | tojson }}}{% endfor %}<|eot_id|>' +
  "{% elif m.role == 'tool' %}<|start_header_id|>ipython<|end_header_id|>\n\n{{ m.content }}<|eot_id|>" +
  "{% else %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endif %}" +
  "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";

const QWEN_STYLE = "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}\n{{ t | tojson }}" +
  "{% endfor %}\n</tools><|im_end|>\n{% endif %}{% for m in messages %}{% if m.role == 'tool' %}" +
  "<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n" +
  "{% elif m.tool_calls %}<|im_start|>assistant\n{% for c in m.tool_calls %}<tool_call>\n" +
  '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}\n</tool_call>' +
  "{% endfor %}<|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}" +
  "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

const MISTRAL_STYLE = "{{ bos_token }}{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]" +
  "{% endif %}{% for m in messages %}{% if m.role == 'user' %}[INST]{{ m.content }}[/INST]" +
  "{% elif m.tool_calls %}[TOOL_CALLS][{% for c in m.tool_calls %}" +
  '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}, "id": "{{ c.id }}"}' +
  "{% endfor %}]{{ eos_token }}{% elif m.role == 'tool' %}[TOOL_RESULTS]" +
  '{"call_id": "{{ m.tool_call_id }}", "content": {{ m.content | tojson }}}[/TOOL_RESULTS]' +
  "{% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}";

const tokens = { bosToken: "<s>", eosToken: "</s>" };

/** The object a template wrote for the call's arguments, parsed back. */
function renderedArguments(text: string): unknown {
  const m = /"name": "get_weather", "(?:arguments|parameters)": (\{[^}]*\})/.exec(text);
  assert(m, text);
  return JSON.parse(m[1]);
}

Deno.test("templates that read tools get tools, tool_calls with object arguments and tool results", () => {
  const cases: [string, ToolFormat, string][] = [
    [LLAMA3_STYLE, "llama3", "<|start_header_id|>ipython<|end_header_id|>\n\nsunny, 21"],
    [QWEN_STYLE, "hermes", "<tool_response>\nsunny, 21\n</tool_response>"],
    [MISTRAL_STYLE, "mistral", '[TOOL_RESULTS]{"call_id": "call_1", "content": "sunny, 21"}[/TOOL_RESULTS]'],
  ];
  for (const [source, family, result] of cases) {
    const t = chatTemplateFrom(source, tokens);
    assertEquals(t.toolFormat, family);
    const text = t.render(CONVERSATION, true, TOOLS);
    for (const tool of TOOLS) assert(text.includes(`"name": "${tool.function.name}"`), text);
    assert(
      text.includes('"enum": ["celsius", "fahrenheit"]') || text.includes('"enum":["celsius","fahrenheit"]'),
      text,
    );
    // Arguments reach the template as an object (tojson of a string would quote it).
    assertEquals(renderedArguments(text), { city: "Paris", unit: "celsius", days: 2 });
    assert(text.includes(result), text);
    // Without tools (tool_choice none) no tool list is rendered.
    const plain = t.render(CONVERSATION, true);
    assert(!plain.includes("get_time"), plain);
  }
});

Deno.test("templates that know no tools get the Hermes description, calls and results as text", () => {
  const t = chatTemplateFrom(null, tokens);
  assertEquals(t.toolFormat, "hermes");
  const text = t.render([{ role: "system", content: "Be brief." }, ...CONVERSATION], true, TOOLS);
  assert(text.startsWith("<|im_start|>system\nBe brief.\n\n# Tools\n"), text);
  assert(text.includes(`<tools>\n${JSON.stringify(TOOLS[0])}\n${JSON.stringify(TOOLS[1])}\n</tools>`), text);
  assert(
    text.includes(
      '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": ' +
        '{"city":"Paris","unit":"celsius","days":2}}\n</tool_call><|im_end|>',
    ),
    text,
  );
  assert(text.includes("<|im_start|>user\n<tool_response>\nsunny, 21\n</tool_response><|im_end|>"), text);
  // No system message: one is added for the tools.
  assert(t.render(CONVERSATION.slice(0, 1), true, TOOLS).startsWith("<|im_start|>system\n# Tools"));
  assert(!t.render(CONVERSATION.slice(0, 1), true).includes("# Tools"));
});

/** Events of `text` fed in pieces of `step` characters, merged. */
function parse(
  format: ToolFormat,
  text: string,
  step: number,
): { events: ToolEvent[]; parser: ToolCallParser } {
  const parser = new ToolCallParser(format);
  const events: ToolEvent[] = [];
  for (let i = 0; i < text.length; i += step) events.push(...parser.push(text.slice(i, i + step)));
  events.push(...parser.end());
  return { events, parser };
}

function summary(events: ToolEvent[]) {
  let content = "";
  const calls: { name: string; arguments: string }[] = [];
  for (const e of events) {
    if (e.type === "content") content += e.text;
    else if (e.type === "call") {
      assertEquals(e.index, calls.length, "calls are numbered in order, named before their arguments");
      assert(/^call_[0-9a-f]{24}$/.test(e.id), e.id);
      calls.push({ name: e.name, arguments: "" });
    } else calls[e.index].arguments += e.text;
  }
  return { content, calls };
}

Deno.test("tool-call text is parsed per family, the same whole or a character at a time", () => {
  const w = '{"city": "Paris", "unit": "celsius", "days": 2}';
  const cases: [ToolFormat, string, string, { name: string; arguments: string }[]][] = [
    [
      "hermes",
      `Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": ${w}}\n</tool_call>`,
      "Let me look.\n",
      [
        { name: "get_weather", arguments: w },
      ],
    ],
    [
      "hermes",
      '<tool_call>{"name": "get_time", "arguments": {"zone":"UTC"}}</tool_call> <tool_call>{"name": "get_time", "arguments": {"zone":"CET"}}</tool_call>',
      "",
      [
        { name: "get_time", arguments: '{"zone":"UTC"}' },
        { name: "get_time", arguments: '{"zone":"CET"}' },
      ],
    ],
    // Keys in another order: still a call, once the object is complete.
    ["hermes", '<tool_call>\n{"arguments": {"zone": "UTC"}, "name": "get_time"}\n</tool_call>', "", [
      { name: "get_time", arguments: '{"zone":"UTC"}' },
    ]],
    ["hermes", "a < b and <tool is not a call", "a < b and <tool is not a call", []],
    ["llama3", `{"name": "get_weather", "parameters": ${w}}`, "", [{ name: "get_weather", arguments: w }]],
    ["llama3", `<|python_tag|>{"name": "get_weather", "parameters": ${w}}`, "", [
      { name: "get_weather", arguments: w },
    ]],
    ["llama3", "It is {probably} sunny.", "It is {probably} sunny.", []],
    ["llama3", '  {"answer": 42}', '{"answer": 42}', []],
    [
      "mistral",
      `[TOOL_CALLS][{"name": "get_weather", "arguments": ${w}}, {"name": "get_time", "arguments": {"zone": "UTC"}}]`,
      "",
      [
        { name: "get_weather", arguments: w },
        { name: "get_time", arguments: '{"zone": "UTC"}' },
      ],
    ],
    ["mistral", "Plain [answer] here", "Plain [answer] here", []],
  ];
  for (const [format, text, content, calls] of cases) {
    for (const step of [1, 3, text.length]) {
      const { events, parser } = parse(format, text, step);
      const s = summary(events);
      assertEquals(s, { content, calls }, `${format} step ${step}: ${text}`);
      assertEquals(parser.calls.map(({ name, arguments: a }) => ({ name, arguments: a })), calls);
    }
  }
});

interface Streamed {
  content: string;
  calls: { id: string; name: string; arguments: string }[];
  finish: string | null;
}

async function streamCall(
  client: OpenAI,
  model: string,
  messages: OpenAI.ChatCompletionMessageParam[],
  toolChoice: OpenAI.ChatCompletionToolChoiceOption,
  seed: number,
): Promise<Streamed> {
  const stream = await client.chat.completions.create({
    model,
    messages,
    tools: TOOLS as OpenAI.ChatCompletionTool[],
    tool_choice: toolChoice,
    max_tokens: 200,
    temperature: 1,
    seed,
    stream: true,
  });
  const out: Streamed = { content: "", calls: [], finish: null };
  let nameChunks = 0;
  for await (const chunk of stream) {
    const choice = chunk.choices[0];
    if (!choice) continue;
    out.content += choice.delta.content ?? "";
    for (const tc of choice.delta.tool_calls ?? []) {
      if (tc.id) {
        assertEquals(tc.index, out.calls.length);
        assertEquals(tc.type, "function");
        out.calls.push({ id: tc.id, name: tc.function!.name!, arguments: tc.function?.arguments ?? "" });
        nameChunks++;
      } else {
        out.calls[tc.index].arguments += tc.function?.arguments ?? "";
      }
    }
    if (choice.finish_reason) out.finish = choice.finish_reason;
  }
  assertEquals(nameChunks, out.calls.length);
  return out;
}

async function roundTrip(baseURL: string, model: string): Promise<void> {
  const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0 });
  const user: OpenAI.ChatCompletionMessageParam = { role: "user", content: "What is the weather in Paris?" };
  const choices: OpenAI.ChatCompletionToolChoiceOption[] = [
    "required",
    { type: "function", function: { name: "get_time" } },
    { type: "function", function: { name: "get_weather" } },
  ];
  for (const [i, toolChoice] of choices.entries()) {
    for (const seed of [1, 2]) {
      const r = await streamCall(client, model, [user], toolChoice, seed);
      const what = `${model} ${JSON.stringify(toolChoice)} seed ${seed}: ${JSON.stringify(r)}`;
      assertEquals(r.finish, "tool_calls", what);
      assert(r.calls.length >= 1, what);
      if (typeof toolChoice === "object" && toolChoice.type === "function") {
        assertEquals(r.calls.map((c) => c.name), [toolChoice.function.name], what);
      }
      for (const c of r.calls) SCHEMAS[c.name].parse(JSON.parse(c.arguments));
      if (i > 0 || seed > 1) continue;
      // The call and its result go back; the answer is text.
      const call = r.calls[0];
      const answer = await client.chat.completions.create({
        model,
        messages: [
          user,
          {
            role: "assistant",
            content: null,
            tool_calls: [{
              id: call.id,
              type: "function",
              function: { name: call.name, arguments: call.arguments },
            }],
          },
          { role: "tool", tool_call_id: call.id, content: "Sunny, 21 degrees." },
        ],
        tools: TOOLS as OpenAI.ChatCompletionTool[],
        tool_choice: "none",
        max_tokens: 24,
        seed: 3,
      });
      const msg = answer.choices[0].message;
      assert(typeof msg.content === "string" && msg.content.length > 0, JSON.stringify(answer));
      assertEquals(msg.tool_calls ?? [], []);
      assert(["stop", "length"].includes(answer.choices[0].finish_reason), JSON.stringify(answer));
    }
  }
  // Non-streaming: message.tool_calls with content null.
  const r = await client.chat.completions.create({
    model,
    messages: [user],
    tools: TOOLS as OpenAI.ChatCompletionTool[],
    tool_choice: "required",
    max_tokens: 200,
    seed: 4,
  });
  const msg = r.choices[0].message;
  assertEquals(r.choices[0].finish_reason, "tool_calls", JSON.stringify(r));
  assertEquals(msg.content, null);
  for (const c of msg.tool_calls!) {
    assert(c.type === "function");
    SCHEMAS[c.function.name].parse(JSON.parse(c.function.arguments));
  }
}

async function post(baseURL: string, body: unknown): Promise<Response> {
  return await fetch(`${baseURL}/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}

Deno.test("streamed tool calls on stories260K: required and named give valid calls; bad tools get 400", async () => {
  await withServerProcess({ args: ["--max-model-len", "2048"] }, async (s) => {
    await roundTrip(s.baseURL, "stories260K");
    const messages = [{ role: "user", content: "Hi" }];
    const fn = (f: Record<string, unknown>) => [{ type: "function", function: f }];
    const bad: [Record<string, unknown>, string][] = [
      [{ tools: [{ type: "retrieval", function: { name: "x" } }] }, "tools[0].type"],
      [{ tools: fn({ name: "has space" }) }, "tools[0].function.name"],
      [{ tools: fn({}) }, "tools[0].function.name"],
      [{ tools: fn({ name: "x", parameters: "object" }) }, "tools[0].function.parameters"],
      [{ tools: fn({ name: "x", extra: 1 }) }, "tools[0].function.extra"],
      [{ tools: fn({ name: "x", parameters: { type: "foo" } }) }, "tools"],
      [{ tools: [...fn({ name: "x" }), ...fn({ name: "x" })] }, "tools"],
      [
        { tools: fn({ name: "x" }), tool_choice: { type: "function", function: { name: "y" } } },
        "tool_choice",
      ],
      [{ tools: fn({ name: "x" }), tool_choice: "sometimes" }, "tool_choice"],
      [{ tool_choice: "required" }, "tool_choice"],
      [{ tools: fn({ name: "x" }), response_format: { type: "json_object" } }, "response_format"],
    ];
    for (const [body, param] of bad) {
      const res = await post(s.baseURL, { messages, max_tokens: 4, ...body });
      const text = await res.text();
      assertEquals(res.status, 400, `${JSON.stringify(body)}: ${text}`);
      assertEquals(JSON.parse(text).error.param, param, text);
    }
    // The server still answers after the aborted compile.
    const ok = await post(s.baseURL, {
      messages,
      max_tokens: 4,
      tools: fn({ name: "x" }),
      tool_choice: "none",
    });
    assertEquals(ok.status, 200, await ok.clone().text());
    await ok.body?.cancel();
  });
});

Deno.test("streamed tool calls on random weights with a Llama-3-style template", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ragtime-tools-" });
  try {
    const model = join(dir, "tiny-llama");
    await makeModel({ preset: "tiny-llama", out: model, seed: 11, dtype: "f32" });
    const path = join(model, "tokenizer_config.json");
    const config = JSON.parse(await Deno.readTextFile(path));
    await Deno.writeTextFile(path, JSON.stringify({ ...config, chat_template: LLAMA3_STYLE }));
    await withServerProcess({ args: ["--model", model, "--max-model-len", "1024"] }, async (s) => {
      await roundTrip(s.baseURL, "tiny-llama");
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
