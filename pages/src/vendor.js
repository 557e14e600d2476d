// The browser libraries the pages import, bundled once by `npm run build` into
// static/vendor/vendor.js (ES module).
export { io } from "socket.io-client";
export * as msgpackParser from "socket.io-msgpack-parser";
