// The official socket.io-client with socket.io-msgpack-parser, speaking protocol v1 to a node.
// Usage: node socketio_client.cjs URL TOKEN SESSION TEXT — prints one JSON line of what it saw.
const { io } = require("socket.io-client");
const parser = require("socket.io-msgpack-parser");

const [url, token, session, text] = process.argv.slice(2);
const seen = { hello: null, snapshot: null, events: [], ack: null, error: null };
const socket = io(url, {
  parser,
  transports: ["websocket"],
  reconnection: false,
  auth: { token, session, since: null },
});
const finish = (code) => {
  socket.close();
  console.log(JSON.stringify(seen));
  process.exit(code);
};
setTimeout(() => { seen.error = "timeout"; finish(1); }, 15000);
socket.on("connect_error", (err) => { seen.error = { message: err.message, data: err.data }; finish(2); });
socket.on("hello", (hello) => { seen.hello = hello; });
// The published event may arrive before the acknowledgement or after it: done with both.
const published = () => seen.events.some((e) => e.type === "comment.published" && e.data.text === text);
const done = () => { if (seen.ack !== null && published()) finish(0); };
socket.on("snapshot", async (snapshot) => {
  seen.snapshot = snapshot;
  seen.ack = await socket.timeout(10000).emitWithAck("comment.send", { text, key: "js-1" });
  done();
});
socket.on("events", (batch) => {
  seen.events.push(...batch);
  done();
});
