#!/usr/bin/env node
// A Distillery call-socket client on the npm `ws` package, driven by tests/test_calls_clients.py.
//
// Usage: node calls_client.js URL [--header "Name: value"]... [--protocol NAME]...
// stdin, one JSON command per line:
//   {"binary": VALUE}        send JSON.stringify(VALUE) as a binary frame
//   {"binary_b64": "..."}    send these raw bytes as a binary frame
//   {"text": "..."}          send a text frame
//   {"text_repeat": ["x", N]} send a text frame of "x" repeated N times
//   {"close": CODE}          start the closing handshake
//   {"terminate": true}      drop the connection without a close frame
// stdout, one JSON event per line:
//   {"event": "open", "protocol": "..."} | {"event": "text", "data": "..."}
//   {"event": "binary", "data": "<utf-8>"} | {"event": "close", "code": N, "reason": "..."}
//   {"event": "error", "message": "..."}
"use strict";

const readline = require("readline");
const WebSocket = require("ws");

function parseArgs(argv) {
  const options = { url: argv[0], headers: {}, protocols: [] };
  for (let i = 1; i < argv.length; i += 2) {
    if (argv[i] === "--header") {
      const at = argv[i + 1].indexOf(":");
      options.headers[argv[i + 1].slice(0, at).trim()] = argv[i + 1].slice(at + 1).trim();
    } else if (argv[i] === "--protocol") {
      options.protocols.push(argv[i + 1]);
    } else {
      throw new Error(`unknown option ${argv[i]}`);
    }
  }
  return options;
}

function emit(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

function perform(ws, command) {
  if ("binary" in command) ws.send(Buffer.from(JSON.stringify(command.binary)), { binary: true });
  else if ("binary_b64" in command) ws.send(Buffer.from(command.binary_b64, "base64"), { binary: true });
  else if ("text" in command) ws.send(command.text, { binary: false });
  else if ("text_repeat" in command) ws.send(command.text_repeat[0].repeat(command.text_repeat[1]), { binary: false });
  else if ("close" in command) ws.close(command.close);
  else if ("terminate" in command) ws.terminate();
}

function main() {
  const options = parseArgs(process.argv.slice(2));
  const ws = new WebSocket(options.url, options.protocols, { headers: options.headers });
  const pending = [];
  let open = false;

  ws.on("open", () => {
    open = true;
    emit({ event: "open", protocol: ws.protocol });
    pending.splice(0).forEach((command) => perform(ws, command));
  });
  ws.on("message", (data, isBinary) => {
    emit({ event: isBinary ? "binary" : "text", data: data.toString("utf8") });
  });
  ws.on("error", (error) => emit({ event: "error", message: String(error && error.message) }));
  ws.on("close", (code, reason) => {
    emit({ event: "close", code, reason: reason.toString("utf8") });
    process.stdout.write("", () => process.exit(0));
  });

  readline.createInterface({ input: process.stdin }).on("line", (line) => {
    if (!line.trim()) return;
    const command = JSON.parse(line);
    if (open) perform(ws, command);
    else pending.push(command);
  });
}

main();
