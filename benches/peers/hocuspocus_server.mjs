// The Hocuspocus 3.4 peer for benches/yjs.sh: Yjs documents synced over WebSocket on 127.0.0.1.
// Hocuspocus is mounted on our own http + ws server because the `address` option of its Server is
// ignored in 3.4 (it would bind every interface). Documents live in memory only: Hocuspocus has no
// built-in durable store that installs without a native build (its SQLite extension needs sqlite3),
// so, like the y-websocket reference server, it keeps nothing across restarts.
//
// Usage: node hocuspocus_server.mjs PORT   (prints "listening" when ready)
import http from "node:http";
import { WebSocketServer } from "ws";
import { Hocuspocus } from "@hocuspocus/server";

const port = Number(process.argv[2] || 18091);
const hocuspocus = new Hocuspocus({ quiet: true });
const server = http.createServer((_req, res) => res.writeHead(200).end("ok"));
const wss = new WebSocketServer({ noServer: true });

server.on("upgrade", (req, socket, head) => {
  wss.handleUpgrade(req, socket, head, (ws) => hocuspocus.handleConnection(ws, req));
});
server.listen(port, "127.0.0.1", () => console.log(`hocuspocus listening on ${port}`));
