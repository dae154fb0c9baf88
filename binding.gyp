{
  "targets": [
    {
      "target_name": "thinvault_native",
      "sources": [
        "native/addon.cc",
        "native/common.cc",
        "native/crc32c.cc",
        "native/io.cc",
        "native/tape.cc"
      ],
      "dependencies": [
        "<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"
      ],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-Wall", "-Wextra", "-Wno-unused-parameter"],
      "cflags_cc": ["-std=c++17"],
      "cflags_cc!": ["-std=gnu++17", "-fno-exceptions"],
      "configurations": {
        "Release": {
          "cflags!": ["-O3"],
          "cflags": ["-O2"]
        }
      },
      "conditions": [
        ["OS!='linux'", {
          "type": "none"
        }]
      ]
    }
  ]
}
