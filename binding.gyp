{
  "targets": [
    {
      "target_name": "sigma_native",
      "sources": [
        "<!@(node -p \"require('fs').readdirSync('native/src/kernels').filter(f=>f.endsWith('.cpp')).map(f=>'native/src/kernels/'+f).join(' ')\")",
        "<!@(node -p \"require('fs').readdirSync('native/src/napi').filter(f=>f.endsWith('.cpp')).map(f=>'native/src/napi/'+f).join(' ')\")"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native/include"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS"
      ],
      "cflags!": [
        "-fno-exceptions"
      ],
      "cflags_cc!": [
        "-fno-exceptions",
        "-std=gnu++17",
        "-std=gnu++1y",
        "-std=gnu++20"
      ],
      "cflags": [
        "-O3",
        "-fno-math-errno",
        "-fno-trapping-math",
        "-pthread"
      ],
      "cflags_cc": [
        "-O3",
        "-std=c++17",
        "-fexceptions",
        "-fno-math-errno",
        "-fno-trapping-math",
        "-pthread"
      ],
      "ldflags": [
        "-pthread"
      ],
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "OTHER_CFLAGS": [
          "-O3",
          "-fno-math-errno"
        ]
      },
      "msvs_settings": {
        "VCCLCompilerTool": {
          "ExceptionHandling": 1,
          "AdditionalOptions": [
            "/O2",
            "/std:c++17"
          ]
        }
      }
    }
  ],
  "variables": {
    "sigma_mpi%": "<!(node scripts/mpi-detect.cjs)"
  },
  "conditions": [
    [
      "sigma_mpi==1",
      {
        "targets": [
          {
            "target_name": "sigma_mpi",
            "sources": [
              "native/src/mpi/mpi_napi.cpp"
            ],
            "include_dirs": [
              "<!(node -p \"require('node-addon-api').include_dir\")",
              "<!@(node scripts/mpi-detect.cjs cflags)"
            ],
            "libraries": [
              "<!@(node scripts/mpi-detect.cjs libs)"
            ],
            "defines": [
              "NAPI_VERSION=8",
              "NAPI_CPP_EXCEPTIONS",
              "OMPI_SKIP_MPICXX=1",
              "MPICH_SKIP_MPICXX=1"
            ],
            "cflags!": [
              "-fno-exceptions"
            ],
            "cflags_cc!": [
              "-fno-exceptions",
              "-std=gnu++17",
              "-std=gnu++1y",
              "-std=gnu++20"
            ],
            "cflags_cc": [
              "-O2",
              "-std=c++17",
              "-fexceptions"
            ],
            "xcode_settings": {
              "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
              "CLANG_CXX_LANGUAGE_STANDARD": "c++17"
            }
          }
        ]
      }
    ]
  ]
}
