// Runs when `node-gyp rebuild` fails during `npm install`. The package still
// works: Sigma falls back to the plain-TypeScript reference backend and says
// so once at run time. We exit 0 so that installation itself does not fail.
console.warn(
  "\n[sigma] The native kernel addon did not build (see the node-gyp output above).\n" +
    "[sigma] Sigma will run on the plain-TypeScript reference backend, which is much slower.\n" +
    "[sigma] To build it: install a C++ compiler (g++ or clang++) and Node's headers, then run `npm run build:native`.\n",
);
