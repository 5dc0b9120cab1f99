// The Socket.IO 4 peer for benches/realtime.sh: rooms and broadcast, WebSocket transport only,
// on 127.0.0.1. A publisher emits "publish" {room, id} with an acknowledgement; the server
// broadcasts "msg" to the room, then acknowledges.
const http = require("http");
const { Server } = require("socket.io");

const port = Number(process.argv[2] || 18090);
const server = http.createServer();
const io = new Server(server, { transports: ["websocket"], serveClient: false });
io.on("connection", (socket) => {
  socket.on("join", (room) => socket.join(room));
  socket.on("publish", (m, ack) => {
    io.to(m.room).emit("msg", m);
    if (typeof ack === "function") ack(1);
  });
});
server.listen(port, "127.0.0.1", () => console.log(`socket.io listening on ${port}`));
