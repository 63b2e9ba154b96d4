// A webhook receiver for the benchmarks: Node's own HTTP server (far faster than
// Python's, so the receiver is not what is measured). It checks every Standard
// Webhooks signature (HMAC-SHA256 over `id.timestamp.body`, the key being the base64
// after `whsec_`), answers 200, and logs `webhook-id arrival-ms verified` per request.
// The scenario tests use tests/peers/webhook_receiver.py, built on the official
// library; this one follows the same algorithm.
//
//   node fast_receiver.mjs SECRET LOG      (prints its port on the first line)
import { createHmac, timingSafeEqual } from "node:crypto";
import { createWriteStream } from "node:fs";
import { createServer } from "node:http";

const [secret, logPath] = process.argv.slice(2);
const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
const log = createWriteStream(logPath);

function verified(headers, body) {
  const id = headers["webhook-id"];
  const ts = headers["webhook-timestamp"];
  const sigs = (headers["webhook-signature"] || "").split(" ");
  if (!id || !ts) return false;
  const mac = createHmac("sha256", key).update(`${id}.${ts}.`).update(body).digest();
  return sigs.some((s) => {
    const [v, b64] = s.split(",");
    const given = Buffer.from(b64 || "", "base64");
    return v === "v1" && given.length === mac.length && timingSafeEqual(given, mac);
  });
}

const server = createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const ok = verified(req.headers, Buffer.concat(chunks));
    log.write(`${req.headers["webhook-id"]} ${Date.now()} ${ok}\n`);
    res.writeHead(ok ? 200 : 401, { "content-type": "text/plain" });
    res.end(ok ? "ok" : "bad signature");
  });
});
server.keepAliveTimeout = 60_000;
server.listen(0, "127.0.0.1", () => console.log(server.address().port));
