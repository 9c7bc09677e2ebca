// Node.js side of the interop harness: real socket.io clients, a real socket.io
// server (optionally clustered through @socket.io/redis-adapter) and
// @socket.io/redis-emitter, all driven by pytest through JSON lines.
//
// Protocol: one JSON object per line on stdin (commands) and on stdout
// (replies and asynchronous events). stderr carries diagnostics only, so that
// nothing a library logs can corrupt the stdout stream the Python side parses.
// See tests/node_driver.py for the controlling side.

import { createServer } from "node:http";
import { createInterface } from "node:readline";
import { Server } from "socket.io";
import { io as connectClient } from "socket.io-client";
import { createAdapter, createShardedAdapter } from "@socket.io/redis-adapter";
import { Emitter } from "@socket.io/redis-emitter";
import { createClient, createCluster } from "redis";

const DEFAULT_SERVER = "default";
const STOP_GRACE_MS = 3000;

class CommandError extends Error {
  constructor(message, data) {
    super(message);
    this.data = data;
  }
}

// ---------------------------------------------------------------- JSON I/O

// Binary payloads cannot travel as JSON, so both directions agree on the
// {"$bin": "<hex>"} envelope; hex keeps the Python side free of base64 quirks.
function toWire(value) {
  if (value === null || value === undefined) return value ?? null;
  if (Buffer.isBuffer(value)) return { $bin: value.toString("hex") };
  if (value instanceof ArrayBuffer) return { $bin: Buffer.from(value).toString("hex") };
  if (ArrayBuffer.isView(value)) {
    return { $bin: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("hex") };
  }
  if (Array.isArray(value)) return value.map(toWire);
  if (value instanceof Error) return { message: value.message, data: toWire(value.data) };
  if (value instanceof Set) return Array.from(value, toWire);
  if (value instanceof Map) return toWire(Object.fromEntries(value));
  if (typeof value === "function") return null;
  if (typeof value === "object") {
    if (typeof value.toJSON === "function") return value.toJSON();
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = toWire(v);
    return out;
  }
  if (typeof value === "bigint") return value.toString();
  return value;
}

function fromWire(value) {
  if (Array.isArray(value)) return value.map(fromWire);
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === "$bin" && typeof value.$bin === "string") {
      return Buffer.from(value.$bin, "hex");
    }
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = fromWire(v);
    return out;
  }
  return value;
}

function send(message) {
  let line;
  try {
    line = JSON.stringify(toWire(message));
  } catch (err) {
    line = JSON.stringify({ ev: "driver_error", message: `unserialisable output: ${err.message}` });
  }
  process.stdout.write(line + "\n");
}

function diag(...parts) {
  process.stderr.write(`[driver] ${parts.join(" ")}\n`);
}

function errorMessage(err) {
  if (err instanceof Error) return err.message || err.name;
  return String(err);
}

// Ack callbacks are always the trailing function argument in socket.io.
function splitAck(args) {
  if (args.length && typeof args[args.length - 1] === "function") {
    return [args.slice(0, -1), args[args.length - 1]];
  }
  return [args, undefined];
}

function asList(value) {
  if (value === undefined || value === null) return [];
  return Array.isArray(value) ? value : [value];
}

function withTimeout(promise, ms, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new CommandError(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

// ------------------------------------------------------------------ clients

const clients = new Map(); // name -> {socket, ackReplies: Map<event, args>}

function clientEntry(name) {
  const entry = clients.get(name);
  if (!entry) throw new CommandError(`unknown client ${JSON.stringify(name)}`);
  return entry;
}

async function clientConnect({ name, url, nsp, opts }) {
  if (typeof name !== "string" || !name) throw new CommandError("client.connect needs a name");
  if (typeof url !== "string") throw new CommandError("client.connect needs a url");
  const previous = clients.get(name);
  if (previous) previous.socket.disconnect();

  const options = { ...fromWire(opts ?? {}) };
  const replyTimeout = options.replyTimeout ?? 5000;
  delete options.replyTimeout;
  if (options.forceNew !== false) options.forceNew = true;

  const socket = connectClient(url + (nsp ?? ""), options);
  const entry = { socket, ackReplies: new Map() };
  clients.set(name, entry);

  socket.on("connect", () => {
    send({ ev: "connect", name, id: socket.id, transport: socket.io.engine?.transport?.name ?? null });
  });
  socket.on("connect_error", (err) => {
    send({ ev: "connect_error", name, message: errorMessage(err), data: err?.data ?? null });
  });
  socket.on("disconnect", (reason) => {
    send({ ev: "disconnect", name, reason });
  });
  // The manager builds a fresh engine on every (re)connection, so the upgrade
  // listener has to be attached again each time one opens.
  const watchEngine = () => {
    const engine = socket.io.engine;
    if (!engine || engine.__driverWatched) return;
    engine.__driverWatched = true;
    engine.on("upgrade", (transport) => {
      send({ ev: "upgrade", name, transport: transport?.name ?? String(transport) });
    });
  };
  socket.io.on("open", watchEngine);
  watchEngine();

  socket.onAny((event, ...rawArgs) => {
    const [args, ack] = splitAck(rawArgs);
    send({ ev: "event", name, event, args, ack: ack !== undefined });
    if (ack) {
      const configured = entry.ackReplies.get(event);
      ack(...(configured ?? [`ack:${event}`, ...args]));
    }
  });

  return await new Promise((resolve, reject) => {
    const cleanup = () => {
      clearTimeout(timer);
      socket.off("connect", onConnect);
      socket.off("connect_error", onError);
    };
    const onConnect = () => {
      cleanup();
      resolve({ id: socket.id, transport: socket.io.engine?.transport?.name ?? null });
    };
    const onError = (err) => {
      cleanup();
      reject(new CommandError(errorMessage(err), err?.data ?? null));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new CommandError(`client ${name} did not connect within ${replyTimeout} ms`));
    }, replyTimeout);
    socket.on("connect", onConnect);
    socket.on("connect_error", onError);
  });
}

function clientAckReply({ name, event, args }) {
  const entry = clientEntry(name);
  if (args === null || args === undefined) entry.ackReplies.delete(event);
  else entry.ackReplies.set(event, fromWire(asList(args)));
  return null;
}

async function clientEmit({ name, event, args, ack, timeout }) {
  const { socket } = clientEntry(name);
  const payload = fromWire(asList(args));
  if (!ack) {
    socket.emit(event, ...payload);
    return null;
  }
  // emitWithAck() resolves with the first ack argument only; the harness wants
  // all of them, so the callback form with the same timeout semantics is used.
  return await new Promise((resolve, reject) => {
    socket.timeout(timeout ?? 5000).emit(event, ...payload, (err, ...ackArgs) => {
      if (err) reject(new CommandError(errorMessage(err)));
      else resolve(ackArgs);
    });
  });
}

function clientDisconnect({ name }) {
  clientEntry(name).socket.disconnect();
  return null;
}

function clientTransport({ name }) {
  const { socket } = clientEntry(name);
  return socket.io.engine?.transport?.name ?? null;
}

// Connection state recovery: what the client knows of it (socket.recovered after its latest
// connect), and a way to lose the connection without a client-side disconnect, as a network
// blip does (the manager reconnects and the socket sends its pid and last offset).
function clientState({ name }) {
  const { socket } = clientEntry(name);
  return { connected: socket.connected, id: socket.id ?? null, recovered: Boolean(socket.recovered) };
}

function clientEngineClose({ name }) {
  const { socket } = clientEntry(name);
  if (!socket.io.engine) throw new CommandError(`client ${JSON.stringify(name)} has no engine`);
  socket.io.engine.close();
  return null;
}

// socket.connect() again on a client that disconnected (by itself or by the server): the
// socket keeps its pid and last offset, so it asks for its earlier session.
async function clientReconnect({ name, timeout }) {
  const { socket } = clientEntry(name);
  const limit = timeout ?? 5000;
  return await new Promise((resolve, reject) => {
    const cleanup = () => {
      clearTimeout(timer);
      socket.off("connect", onConnect);
      socket.off("connect_error", onError);
    };
    const onConnect = () => {
      cleanup();
      resolve({ id: socket.id, recovered: Boolean(socket.recovered) });
    };
    const onError = (err) => {
      cleanup();
      reject(new CommandError(errorMessage(err), err?.data ?? null));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new CommandError(`client ${name} did not reconnect within ${limit} ms`));
    }, limit);
    socket.on("connect", onConnect);
    socket.on("connect_error", onError);
    socket.connect();
  });
}

// Where the client's manager connects next (a reconnection to another node of the cluster).
function clientSetUrl({ name, url }) {
  const { socket } = clientEntry(name);
  if (typeof url !== "string") throw new CommandError("client.set_url needs a url");
  socket.io.uri = url;
  return null;
}

function clientList() {
  const out = {};
  for (const [name, { socket }] of clients) out[name] = { connected: socket.connected, id: socket.id ?? null };
  return out;
}

// ------------------------------------------------------------------ servers

const servers = new Map(); // name -> {io, httpServer, redisClients, port}

function serverEntry(server) {
  const name = server ?? DEFAULT_SERVER;
  const entry = servers.get(name);
  if (!entry) throw new CommandError(`no server ${JSON.stringify(name)} is running`);
  return entry;
}

function onRedisError(label) {
  // node-redis emits "error" while reconnecting; an unhandled "error" event
  // would kill the whole driver, which tests that restart Redis rely on not happening.
  let last = "";
  return (err) => {
    const text = errorMessage(err);
    if (text !== last) diag(`${label} redis error: ${text}`);
    last = text;
  };
}

async function connectRedisPair({ redisUrl, clusterNodes }, label) {
  let pub;
  if (Array.isArray(clusterNodes) && clusterNodes.length) {
    const rootNodes = clusterNodes.map((node) => ({ url: node.url }));
    pub = createCluster({ rootNodes });
  } else if (redisUrl) {
    pub = createClient({ url: redisUrl });
  } else {
    throw new CommandError("a redis adapter needs redisUrl or clusterNodes");
  }
  const sub = pub.duplicate();
  pub.on("error", onRedisError(`${label}/pub`));
  sub.on("error", onRedisError(`${label}/sub`));
  await Promise.all([pub.connect(), sub.connect()]);
  return [pub, sub];
}

function installTestApp(io, serverName) {
  for (const nspName of ["/", "/chat"]) {
    const nsp = io.of(nspName);

    // serverSideEmit has no catch-all hook, so the private dispatcher is wrapped
    // to report every server-side event before normal listeners see it.
    const dispatch = nsp._onServerSideEmit?.bind(nsp);
    if (dispatch) {
      nsp._onServerSideEmit = (packet) => {
        const [event, ...rest] = packet;
        const [args] = splitAck(rest);
        send({ ev: "server_side", server: serverName, nsp: nspName, event, args });
        return dispatch(packet);
      };
    }

    nsp.on("connection", (socket) => {
      // Assigned into, not replaced: an admin-ui instrumented server keeps its data._admin.
      Object.assign(socket.data, { server: "node", auth: socket.handshake.auth });
      socket.emit("welcome", { id: socket.id, nsp: nspName });

      socket.on("join", async (room, ack) => {
        await socket.join(room);
        if (typeof ack === "function") ack(Array.from(socket.rooms));
      });
      socket.on("leave", async (room, ack) => {
        await socket.leave(room);
        if (typeof ack === "function") ack(Array.from(socket.rooms));
      });
      socket.on("echo", (...raw) => {
        const [args, ack] = splitAck(raw);
        if (ack) ack(...args);
        else socket.emit("echo", ...args);
      });
      socket.on("broadcast", (spec, ack) => {
        const { rooms, except, event, args } = spec ?? {};
        let target = nsp;
        if (rooms !== undefined && rooms !== null) target = target.to(rooms);
        if (except !== undefined && except !== null) target = target.except(except);
        target.emit(event, ...asList(args));
        if (typeof ack === "function") ack(true);
      });
    });
  }

  io.on("ping-servers", (arg, cb) => {
    if (typeof cb === "function") cb({ server: "node", arg });
  });
}

async function serverStart(cmd) {
  const name = cmd.server ?? DEFAULT_SERVER;
  if (servers.has(name)) throw new CommandError(`server ${JSON.stringify(name)} is already running`);
  const host = cmd.host ?? "127.0.0.1";
  if (host !== "127.0.0.1") throw new CommandError("the test server binds 127.0.0.1 only");
  const adapterKind = cmd.adapter ?? "none";

  const options = { cors: { origin: true } };
  if (cmd.pingInterval !== undefined) options.pingInterval = cmd.pingInterval;
  if (cmd.pingTimeout !== undefined) options.pingTimeout = cmd.pingTimeout;

  let redisClients = [];
  if (adapterKind === "redis") {
    redisClients = await connectRedisPair(cmd, name);
    const adapterOpts = {};
    if (cmd.key !== undefined) adapterOpts.key = cmd.key;
    if (cmd.requestsTimeout !== undefined) adapterOpts.requestsTimeout = cmd.requestsTimeout;
    options.adapter = createAdapter(redisClients[0], redisClients[1], adapterOpts);
  } else if (adapterKind === "sharded") {
    redisClients = await connectRedisPair(cmd, name);
    const adapterOpts = { subscriptionMode: "dynamic" };
    if (cmd.key !== undefined) adapterOpts.channelPrefix = cmd.key;
    options.adapter = createShardedAdapter(redisClients[0], redisClients[1], adapterOpts);
  } else if (adapterKind === "streams") {
    // @socket.io/redis-streams-adapter 0.3.1 with connection state recovery on (the mixed
    // streams cluster); imported here so the other commands run without the package.
    redisClients = await connectRedisPair(cmd, name);
    const { createAdapter: createStreamsAdapter } = await import("@socket.io/redis-streams-adapter");
    const adapterOpts = {};
    if (cmd.key !== undefined) adapterOpts.channelPrefix = cmd.key;
    if (cmd.streamName !== undefined) adapterOpts.streamName = cmd.streamName;
    options.adapter = createStreamsAdapter(redisClients[0], adapterOpts);
    options.connectionStateRecovery = { maxDisconnectionDuration: cmd.recoveryMs ?? 120000, skipMiddlewares: true };
  } else if (adapterKind !== "none") {
    throw new CommandError(`unknown adapter ${JSON.stringify(adapterKind)}`);
  }

  const httpServer = createServer();
  const io = new Server(httpServer, options);
  const entry = { io, httpServer, redisClients, port: null };
  servers.set(name, entry);
  installTestApp(io, name);
  if (cmd.admin) {
    // @socket.io/admin-ui's instrument(io, opts): {auth: false | {type: "basic", username,
    // password: bcrypt hash}, mode, readonly, serverId}.
    // Imported here so the other commands run without the package installed.
    const { instrument } = await import("@socket.io/admin-ui");
    instrument(io, { auth: false, ...fromWire(cmd.admin) });
  }

  try {
    await new Promise((resolve, reject) => {
      httpServer.once("error", reject);
      httpServer.listen(cmd.port ?? 0, host, () => {
        httpServer.off("error", reject);
        resolve();
      });
    });
  } catch (err) {
    servers.delete(name);
    await closeServer(entry);
    throw err;
  }
  entry.port = httpServer.address().port;
  return { port: entry.port };
}

async function closeServer(entry) {
  await withTimeout(new Promise((resolve) => entry.io.close(() => resolve())), STOP_GRACE_MS, "server close").catch(
    (err) => diag(errorMessage(err)),
  );
  entry.httpServer.closeAllConnections?.();
  for (const client of entry.redisClients) {
    // disconnect() rather than quit(): quit waits for Redis, which may be down.
    await Promise.resolve()
      .then(() => client.disconnect())
      .catch(() => {});
  }
}

async function serverStop({ server }) {
  const name = server ?? DEFAULT_SERVER;
  const entry = serverEntry(name);
  servers.delete(name);
  await closeServer(entry);
  return null;
}

function selectSockets(nsp, rooms, except) {
  let target = nsp;
  if (rooms !== undefined && rooms !== null) target = target.in(rooms);
  if (except !== undefined && except !== null) target = target.except(except);
  return target;
}

function serverBroadcast({ server, nsp, rooms, except, event, args }) {
  const { io } = serverEntry(server);
  selectSockets(io.of(nsp ?? "/"), rooms, except).emit(event, ...fromWire(asList(args)));
  return null;
}

async function serverBroadcastAck({ server, nsp, rooms, except, event, args, timeout }) {
  const { io } = serverEntry(server);
  const target = selectSockets(io.of(nsp ?? "/"), rooms, except).timeout(timeout ?? 5000);
  return await target.emitWithAck(event, ...fromWire(asList(args)));
}

async function serverFetchSockets({ server, nsp, rooms, except }) {
  const { io } = serverEntry(server);
  const sockets = await selectSockets(io.of(nsp ?? "/"), rooms, except).fetchSockets();
  return sockets.map((s) => ({ id: s.id, rooms: Array.from(s.rooms), data: s.data, auth: s.handshake.auth }));
}

async function serverServerSideEmit({ server, nsp, event, args, ack, timeout }) {
  const { io } = serverEntry(server);
  const target = io.of(nsp ?? "/");
  const payload = fromWire(asList(args));
  if (!ack) {
    target.serverSideEmit(event, ...payload);
    return null;
  }
  // Server-to-server acks are bounded by the adapter's requestsTimeout; the
  // optional timeout here only keeps the reply from hanging beyond it.
  const pending = target.serverSideEmitWithAck(event, ...payload);
  return await (timeout ? withTimeout(pending, timeout, "serverSideEmitWithAck") : pending);
}

async function serverSocketsJoin({ server, nsp, rooms, except, join }) {
  const { io } = serverEntry(server);
  await selectSockets(io.of(nsp ?? "/"), rooms, except).socketsJoin(join);
  return null;
}

async function serverSocketsLeave({ server, nsp, rooms, except, leave }) {
  const { io } = serverEntry(server);
  await selectSockets(io.of(nsp ?? "/"), rooms, except).socketsLeave(leave);
  return null;
}

async function serverDisconnectSockets({ server, nsp, rooms, except, close }) {
  const { io } = serverEntry(server);
  await selectSockets(io.of(nsp ?? "/"), rooms, except).disconnectSockets(Boolean(close));
  return null;
}

// ------------------------------------------------------------------ emitter

let emitterState = null; // {client, emitter}

function emitterFor(nsp) {
  if (!emitterState) throw new CommandError("emitter.start has not been called");
  return emitterState.emitter.of(nsp ?? "/");
}

async function emitterStart({ redisUrl, key }) {
  if (!redisUrl) throw new CommandError("emitter.start needs redisUrl");
  await emitterStop();
  const client = createClient({ url: redisUrl });
  client.on("error", onRedisError("emitter"));
  await client.connect();
  emitterState = { client, emitter: new Emitter(client, key !== undefined ? { key } : {}) };
  return null;
}

async function emitterStop() {
  if (!emitterState) return null;
  const { client } = emitterState;
  emitterState = null;
  await Promise.resolve()
    .then(() => client.disconnect())
    .catch(() => {});
  return null;
}

function emitterTarget({ nsp, rooms, except, volatile }) {
  let target = emitterFor(nsp);
  if (rooms !== undefined && rooms !== null) target = target.to(rooms);
  if (except !== undefined && except !== null) target = target.except(except);
  if (volatile) target = target.volatile;
  return target;
}

function emitterEmit(cmd) {
  emitterTarget(cmd).emit(cmd.event, ...fromWire(asList(cmd.args)));
  return null;
}

function emitterSocketsJoin(cmd) {
  emitterTarget(cmd).socketsJoin(cmd.join);
  return null;
}

function emitterSocketsLeave(cmd) {
  emitterTarget(cmd).socketsLeave(cmd.leave);
  return null;
}

function emitterDisconnectSockets(cmd) {
  emitterTarget(cmd).disconnectSockets(Boolean(cmd.close));
  return null;
}

function emitterServerSideEmit({ nsp, event, args }) {
  emitterFor(nsp).serverSideEmit(event, ...fromWire(asList(args)));
  return null;
}

// ---------------------------------------------------------------- lifecycle

let shuttingDown = null;

function shutdown() {
  if (!shuttingDown) {
    shuttingDown = (async () => {
      for (const { socket } of clients.values()) socket.disconnect();
      clients.clear();
      const entries = Array.from(servers.values());
      servers.clear();
      await Promise.all(entries.map(closeServer));
      await emitterStop();
    })();
  }
  return shuttingDown;
}

async function exitDriver() {
  await withTimeout(shutdown(), STOP_GRACE_MS * 2, "shutdown").catch((err) => diag(errorMessage(err)));
  process.exit(0);
}

const commands = {
  "client.connect": clientConnect,
  "client.ack_reply": clientAckReply,
  "client.emit": clientEmit,
  "client.disconnect": clientDisconnect,
  "client.transport": clientTransport,
  "client.list": clientList,
  "client.set_url": clientSetUrl,
  "client.state": clientState,
  "client.engine_close": clientEngineClose,
  "client.reconnect": clientReconnect,
  "server.start": serverStart,
  "server.stop": serverStop,
  "server.broadcast": serverBroadcast,
  "server.broadcast_ack": serverBroadcastAck,
  "server.fetch_sockets": serverFetchSockets,
  "server.server_side_emit": serverServerSideEmit,
  "server.sockets_join": serverSocketsJoin,
  "server.sockets_leave": serverSocketsLeave,
  "server.disconnect_sockets": serverDisconnectSockets,
  "emitter.start": emitterStart,
  "emitter.stop": emitterStop,
  "emitter.emit": emitterEmit,
  "emitter.sockets_join": emitterSocketsJoin,
  "emitter.sockets_leave": emitterSocketsLeave,
  "emitter.disconnect_sockets": emitterDisconnectSockets,
  "emitter.server_side_emit": emitterServerSideEmit,
};

async function handleLine(line) {
  if (!line.trim()) return;
  let message;
  try {
    message = JSON.parse(line);
  } catch (err) {
    send({ ev: "driver_error", message: `invalid JSON command: ${errorMessage(err)}` });
    return;
  }
  const req = message?.req;
  const reply = (body) => {
    if (Number.isInteger(req)) send({ ev: "reply", req, ...body });
  };
  if (message?.cmd === "exit") {
    // Reply once everything is closed so the caller knows the shutdown was clean.
    await withTimeout(shutdown(), STOP_GRACE_MS * 2, "shutdown").catch((err) => diag(errorMessage(err)));
    reply({ ok: true, result: null });
    process.exit(0);
  }
  const handler = commands[message?.cmd];
  if (!handler) {
    reply({ ok: false, error: `unknown command ${JSON.stringify(message?.cmd)}` });
    return;
  }
  try {
    const result = await handler(message);
    reply({ ok: true, result: result ?? null });
  } catch (err) {
    const body = { ok: false, error: errorMessage(err) };
    if (err?.data !== undefined && err?.data !== null) body.data = err.data;
    if (err?.responses !== undefined) body.data = { responses: err.responses };
    reply(body);
  }
}

process.on("unhandledRejection", (err) => diag(`unhandled rejection: ${err?.stack ?? err}`));
process.on("uncaughtException", (err) => diag(`uncaught exception: ${err?.stack ?? err}`));
process.stdout.on("error", () => exitDriver());

const input = createInterface({ input: process.stdin, crlfDelay: Infinity });
input.on("line", (line) => {
  handleLine(line).catch((err) => diag(`command failed: ${err?.stack ?? err}`));
});
input.on("close", () => exitDriver());

send({ ev: "ready", pid: process.pid, node: process.version });
