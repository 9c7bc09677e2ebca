// The bench contract on Node.js socket.io 4.8 (+ @socket.io/redis-adapter 8.3 with --redis):
// `join` (room) -> the socket joins it; `publish` ({room, t, seq, pad}) -> `message` with the same
// object to every socket in that room. Started by bench/run.py as
//   node bench/node/server.mjs --port P [--redis redis://127.0.0.1:R] [--adapter classic|streams]
//   node bench/node/server.mjs --port P --adapter sharded --redis-cluster 127.0.0.1:A,127.0.0.1:B,...
// --adapter streams: @socket.io/redis-streams-adapter 0.3.1 with connection state recovery on
// (what Node needs to recover across nodes), the peer of our REDIS_MODE=streams.
// --adapter sharded: @socket.io/redis-adapter's createShardedAdapter (SPUBLISH/SSUBSCRIBE,
// subscriptionMode "dynamic": a channel per room while this node has members in it) on a Redis
// Cluster through redis 4.7's createCluster, the peer of our REDIS_MODE=sharded.
import { createServer } from "node:http";
import { parseArgs } from "node:util";
import { Server } from "socket.io";
import { createAdapter, createShardedAdapter } from "@socket.io/redis-adapter";
import { createClient, createCluster } from "redis";

const { values } = parseArgs({
  options: {
    port: { type: "string" },
    host: { type: "string", default: "127.0.0.1" },
    redis: { type: "string" },
    adapter: { type: "string", default: "classic" },
    "redis-cluster": { type: "string" },
  },
});

const httpServer = createServer();
const options = { serveClient: false, maxHttpBufferSize: 1e6 };

if (!["classic", "streams", "sharded"].includes(values.adapter)) {
  console.error(`unknown --adapter ${values.adapter}: classic, streams or sharded`);
  process.exit(2);
}
if (values.adapter === "sharded") {
  if (!values["redis-cluster"]) {
    console.error("--adapter sharded needs --redis-cluster host:port,...");
    process.exit(2);
  }
  const rootNodes = values["redis-cluster"].split(",").filter(Boolean).map((node) => ({ url: `redis://${node}` }));
  const pub = createCluster({ rootNodes });
  const sub = pub.duplicate();
  pub.on("error", (err) => console.error(`redis pub: ${err}`));
  sub.on("error", (err) => console.error(`redis sub: ${err}`));
  await Promise.all([pub.connect(), sub.connect()]);
  options.adapter = createShardedAdapter(pub, sub, { subscriptionMode: "dynamic" });
} else if (values.redis && values.adapter === "streams") {
  const { createAdapter: createStreamsAdapter } = await import("@socket.io/redis-streams-adapter");
  const client = createClient({ url: values.redis });
  await client.connect();
  options.adapter = createStreamsAdapter(client);
  options.connectionStateRecovery = { maxDisconnectionDuration: 120000, skipMiddlewares: true };
} else if (values.redis) {
  const pub = createClient({ url: values.redis });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  options.adapter = createAdapter(pub, sub);
}

const io = new Server(httpServer, options);

io.on("connection", (socket) => {
  socket.on("join", (room) => {
    socket.join(room);
  });
  socket.on("publish", (msg) => {
    io.to(msg.room).emit("message", msg);
  });
});

httpServer.listen(Number(values.port), values.host, () => {
  console.log(`listening ${values.host}:${values.port}`);
});

const stop = () => {
  io.close();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
