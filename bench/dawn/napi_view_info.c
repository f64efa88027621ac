// Node-API probe: what napi_get_typedarray_info reports for a Uint8Array over an ArrayBuffer vs over a
// SharedArrayBuffer. dawn.node's GPUQueue.writeBuffer copies from exactly this data pointer.
// Build: gcc -shared -fPIC -I/usr/include/node -o napi_view_info.node napi_view_info.c  (see docs/dawn.md)
#include <node_api.h>
#include <stdio.h>

static napi_value info(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, cbinfo, &argc, argv, NULL, NULL);
  napi_typedarray_type type;
  size_t length = 0, offset = 0;
  void* data = (void*)0x1;  // sentinel: shows whether the call wrote the pointer at all
  napi_value backing;
  napi_status st = napi_get_typedarray_info(env, argv[0], &type, &length, &data, &backing, &offset);
  void* ab_data = (void*)0x1;
  size_t ab_len = 0;
  napi_status st2 = napi_get_arraybuffer_info(env, backing, &ab_data, &ab_len);
  char out[256];
  snprintf(out, sizeof out,
           "typedarray_info status=%d length=%zu offset=%zu data=%p | arraybuffer_info(backing) status=%d len=%zu data=%p",
           (int)st, length, offset, data, (int)st2, ab_len, ab_data);
  napi_value s;
  napi_create_string_utf8(env, out, NAPI_AUTO_LENGTH, &s);
  return s;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "info", NAPI_AUTO_LENGTH, info, NULL, &fn);
  napi_set_named_property(env, exports, "info", fn);
  return exports;
}
