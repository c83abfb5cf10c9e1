// The liability proof verifier of `strongroom-audit verify-liability`, in the browser
// (custody/audit/liability_proof.py, docs/proof-of-reserves.md): the same parse, the same leaf,
// the same RFC 9162 path fold computing every parent sum, the same comparisons with the signed
// snapshot, the same Ed25519 signature check and snapshot hash, the same pins. Nothing is sent
// anywhere: the proof, the keys and the verdict stay in this page.
"use strict";

const U256_MAX = (1n << 256n) - 1n;
const MAX_PROOF_HASHES = 130;
const MAX_TREE_SIZE = 2n ** 63n;
const HEX64 = /^[0-9a-f]{64}$/;
const HEX128 = /^[0-9a-f]{128}$/;
const DIGITS = /^(0|[1-9][0-9]{0,77})$/;
const PROOF_KEYS = ["asset", "balance", "format", "leaf_index", "path", "public_key", "root", "salt",
  "snapshot", "tree_size", "user_id", "version"];
const SNAPSHOT_KEYS = ["checkpoint", "created_ms", "format", "id", "key_name", "key_version", "ledger_head",
  "ledger_seq", "liabilities", "prev_snapshot", "reserves", "signature", "v"];
const LIABILITY_KEYS = ["clamped_accounts", "leaves", "root", "total"];
const RESERVE_KEYS = ["total", "wallets"];
const WALLET_KEYS = ["account", "addresses", "balance", "kind", "owner"];
const SNAPSHOT_SIGNING_DOMAIN = "strongroom.reserves.snapshot.v2\u0000";
const SNAPSHOT_HASH_DOMAIN = "strongroom.reserves.snapshot-hash.v2\u0000";

class FormatError extends Error {}

// custody/audit/untrusted.py's loads: JSON.parse keeps the last of two equal keys, so a proof (or
// keys document) with a key twice could show a reader one value and mean another. Like the CLI,
// refuse it: after JSON.parse has checked the grammar, walk the text once and compare each
// object's keys as decoded strings ("a" and "\u0061" are the same key). Depth is bounded as there.
const MAX_JSON_DEPTH = 16;
function strictJsonParse(text, what) {
  const value = JSON.parse(text);
  let i = 0;
  const space = () => { while (i < text.length && " \t\n\r".includes(text[i])) i += 1; };
  const string = () => {
    const start = i;
    i += 1;
    while (text[i] !== '"') i += text[i] === "\\" ? 2 : 1;
    i += 1;
    return JSON.parse(text.slice(start, i));
  };
  const walk = (depth) => {
    space();
    const c = text[i];
    if (c === "{" || c === "[") {
      if (depth >= MAX_JSON_DEPTH) throw new FormatError(`${what} is nested more than ${MAX_JSON_DEPTH} levels deep`);
      const close = c === "{" ? "}" : "]";
      const seen = new Set();
      i += 1;
      space();
      if (text[i] === close) { i += 1; return; }
      for (;;) {
        if (c === "{") {
          space();
          const key = string();
          if (seen.has(key)) throw new FormatError(`${what}: duplicate key ${JSON.stringify(key.slice(0, 60))}`);
          seen.add(key);
          space();
          i += 1; // the colon
        }
        walk(depth + 1);
        space();
        const next = text[i];
        i += 1;
        if (next === close) return;
      }
    }
    if (c === '"') { string(); return; }
    while (i < text.length && !",]} \t\n\r".includes(text[i])) i += 1; // number, true, false, null
  };
  walk(0);
  return value;
}

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const sameKeys = (obj, keys) => isObject(obj) && Object.keys(obj).sort().join() === keys.join();
const natural = (v, what) => {
  if (!Number.isSafeInteger(v) || v < 0) throw new FormatError(`${what} must be a non-negative integer`);
  return v;
};
const amount = (v, what) => {
  if (typeof v !== "string" || !DIGITS.test(v) || BigInt(v) > U256_MAX) {
    throw new FormatError(`${what} must be a decimal string 0..2^256-1`);
  }
  return BigInt(v);
};
const fromHex = (h) => Uint8Array.from(h.match(/../g) || [], (b) => parseInt(b, 16));
const toHex = (bytes) => Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
const u256 = (n) => fromHex(n.toString(16).padStart(64, "0"));
const concat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
};
const sha256 = async (bytes) => new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
const utf8 = (s) => new TextEncoder().encode(s);

// custody.ledger.entry.canonical_json: Python's json.dumps(sort_keys=True, separators=(",", ":"),
// ensure_ascii=True): keys sorted by code point, every character outside space..~ escaped.
function canonicalJson(value) {
  if (value === null || typeof value === "boolean") return JSON.stringify(value);
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) throw new FormatError("numbers in a snapshot must be integers");
    return String(value);
  }
  if (typeof value === "string") {
    return JSON.stringify(value).replace(/[\u007f-\uffff]/g,
      (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
  }
  if (Array.isArray(value)) return "[" + value.map(canonicalJson).join(",") + "]";
  const keys = Object.keys(value).sort((a, b) => {
    const x = Array.from(a, (c) => c.codePointAt(0));
    const y = Array.from(b, (c) => c.codePointAt(0));
    for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
    return x.length - y.length;
  });
  return "{" + keys.map((k) => canonicalJson(k) + ":" + canonicalJson(value[k])).join(",") + "}";
}

function sumNode(data) {
  if (!sameKeys(data, ["hash", "sum"])) throw new FormatError("a sum node must have exactly hash and sum");
  if (typeof data.hash !== "string" || !HEX64.test(data.hash)) {
    throw new FormatError("a sum node hash must be 64 lowercase hex digits");
  }
  return { hash: fromHex(data.hash), total: amount(data.sum, "a sum node sum") };
}

function parseSnapshot(data) {
  if (!sameKeys(data, SNAPSHOT_KEYS)) throw new FormatError(`a snapshot must have exactly the keys ${SNAPSHOT_KEYS}`);
  if (data.format !== "strongroom.reserves-snapshot" || data.v !== 2) {
    throw new FormatError("snapshot format must be 'strongroom.reserves-snapshot' version 2");
  }
  for (const name of ["id", "created_ms", "ledger_seq", "key_version"]) natural(data[name], `snapshot ${name}`);
  for (const name of ["ledger_head", "checkpoint", "prev_snapshot"]) {
    if (typeof data[name] !== "string" || !HEX64.test(data[name])) {
      throw new FormatError(`snapshot ${name} must be 64 lowercase hex digits`);
    }
  }
  if (typeof data.key_name !== "string" || typeof data.signature !== "string" || !HEX128.test(data.signature)) {
    throw new FormatError("snapshot key_name must be a string and signature 128 hex digits");
  }
  if (!isObject(data.liabilities)) throw new FormatError("snapshot liabilities must be an object keyed by asset");
  const liabilities = new Map();
  for (const [asset, item] of Object.entries(data.liabilities)) {
    if (!sameKeys(item, LIABILITY_KEYS)) throw new FormatError(`snapshot liabilities per asset must have ${LIABILITY_KEYS}`);
    if (typeof item.root !== "string" || !HEX64.test(item.root)) {
      throw new FormatError("snapshot liabilities root must be 64 lowercase hex digits");
    }
    liabilities.set(asset, [item.root, amount(item.total, "snapshot liabilities total"),
      natural(item.leaves, "snapshot leaves"), natural(item.clamped_accounts, "snapshot clamped_accounts")]);
  }
  if (!isObject(data.reserves)) throw new FormatError("snapshot reserves must be an object keyed by asset");
  for (const item of Object.values(data.reserves)) {
    if (!sameKeys(item, RESERVE_KEYS) || !Array.isArray(item.wallets)) {
      throw new FormatError(`snapshot reserves per asset must have ${RESERVE_KEYS}`);
    }
    for (const wallet of item.wallets) {
      if (!sameKeys(wallet, WALLET_KEYS)) throw new FormatError(`snapshot reserve wallets must have ${WALLET_KEYS}`);
      natural(wallet.account, "wallet account");
      amount(wallet.balance, "wallet balance");
    }
    amount(item.total, "snapshot reserves total");
  }
  return { record: data, liabilities };
}

function parseProof(proof) {
  if (!sameKeys(proof, PROOF_KEYS)) throw new FormatError(`a liability proof must be an object with exactly ${PROOF_KEYS}`);
  if (proof.format !== "strongroom.liability-proof" || proof.version !== 2) {
    throw new FormatError("format must be 'strongroom.liability-proof' version 2");
  }
  const { asset, user_id: userId, salt } = proof;
  if (typeof asset !== "string" || typeof userId !== "string" || typeof salt !== "string") {
    throw new FormatError("asset, user_id and salt must be strings");
  }
  if (!HEX64.test(salt)) throw new FormatError("salt must be 64 lowercase hex digits");
  if (/[\ud800-\udfff]/.test(userId.replace(/[\ud800-\udbff][\udc00-\udfff]/g, ""))) {
    throw new FormatError("user_id is not valid Unicode");
  }
  const balance = amount(proof.balance, "balance");
  const index = proof.leaf_index;
  const size = proof.tree_size;
  if (![index, size].every(Number.isSafeInteger) || !(index >= 0 && index < size && BigInt(size) <= MAX_TREE_SIZE)) {
    throw new FormatError("leaf_index and tree_size must be integers with 0 <= leaf_index < tree_size");
  }
  if (!Array.isArray(proof.path) || proof.path.length > MAX_PROOF_HASHES) {
    throw new FormatError(`path must be a list of at most ${MAX_PROOF_HASHES} nodes`);
  }
  const path = proof.path.map(sumNode);
  const root = sumNode(proof.root);
  const key = proof.public_key;
  if (key !== null && (typeof key !== "string" || !HEX64.test(key))) {
    throw new FormatError("public_key must be null or 64 lowercase hex digits");
  }
  const snapshot = parseSnapshot(proof.snapshot);
  return { asset, userId, salt: fromHex(salt), balance, index, size, path, root, snapshot,
           publicKey: key === null ? null : fromHex(key) };
}

async function leafNode(salt, userId, balance) {
  return { hash: await sha256(concat(Uint8Array.of(0), salt, u256(balance), utf8(userId))), total: balance };
}

async function combine(left, right) {
  const total = left.total + right.total;
  if (total > U256_MAX) return null;
  const data = concat(Uint8Array.of(1), left.hash, u256(left.total), right.hash, u256(right.total));
  return { hash: await sha256(data), total };
}

// custody.audit.merkle.fold_inclusion_path (RFC 9162 section 2.1.3.2), with sums.
async function foldPath(leaf, index, size, path) {
  if (!(index >= 0 && index < size) || path.length > MAX_PROOF_HASHES) return null;
  let fn = BigInt(index);
  let sn = BigInt(size - 1);
  let r = leaf;
  for (const p of path) {
    if (sn === 0n) return null;
    if ((fn & 1n) || fn === sn) {
      r = await combine(p, r);
      if (r === null) return null;
      if (!(fn & 1n)) {
        while (!(fn & 1n) && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
      }
    } else {
      r = await combine(r, p);
      if (r === null) return null;
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n ? r : null;
}

async function verifySignature(snapshot, publicKey) {
  const body = Object.fromEntries(Object.entries(snapshot.record).filter(([k]) => k !== "signature"));
  try {
    const key = await crypto.subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
    return await crypto.subtle.verify({ name: "Ed25519" }, key, fromHex(snapshot.record.signature),
      utf8(SNAPSHOT_SIGNING_DOMAIN + canonicalJson(body)));
  } catch (err) {
    return false;
  }
}

// The pinned key for the proof's snapshot signer from a keys.json document (parse_keys), as the
// CLI does: an unknown key pins an all-zero key, so the signature check fails as it should.
function pinnedKey(keysDoc, proof) {
  if (!isObject(keysDoc) || keysDoc.format !== "strongroom.public-keys" || keysDoc.version !== 1 || !Array.isArray(keysDoc.keys)) {
    throw new FormatError("keys document must have format 'strongroom.public-keys' and version 1");
  }
  const snapshot = isObject(proof) ? proof.snapshot : null;
  for (const item of keysDoc.keys) {
    if (!sameKeys(item, ["name", "public_key", "type", "version"]) || item.type !== "ed25519" ||
        typeof item.public_key !== "string" || !HEX64.test(item.public_key)) {
      throw new FormatError("each key must have exactly name, version, type (ed25519), public_key");
    }
    if (isObject(snapshot) && item.name === snapshot.key_name && item.version === snapshot.key_version) {
      return fromHex(item.public_key);
    }
  }
  return new Uint8Array(32);
}

async function verifyLiabilityProof(proof, pinnedPublicKey, pins) {
  let parsed;
  try {
    parsed = parseProof(proof);
  } catch (err) {
    if (err instanceof FormatError) return { ok: false, unusable: true, problems: [`malformed proof: ${err.message}`], notes: [] };
    throw err;
  }
  const problems = [];
  const recomputed = await foldPath(await leafNode(parsed.salt, parsed.userId, parsed.balance),
    parsed.index, parsed.size, parsed.path);
  if (recomputed === null || toHex(recomputed.hash) !== toHex(parsed.root.hash) || recomputed.total !== parsed.root.total) {
    problems.push("the path from the user's leaf does not lead to the proof's root");
  }
  const published = parsed.snapshot.liabilities.get(parsed.asset);
  if (!published || published[0] !== toHex(parsed.root.hash) || published[1] !== parsed.root.total || published[2] !== parsed.size) {
    problems.push("the root, total or leaf count differ from the ones the snapshot publishes for this asset");
  }
  const key = pinnedPublicKey || parsed.publicKey;
  if (key === null || !(await verifySignature(parsed.snapshot, key))) problems.push("the snapshot signature does not verify");
  const digest = toHex(await sha256(utf8(SNAPSHOT_HASH_DOMAIN + canonicalJson(parsed.snapshot.record))));
  const checkpoint = parsed.snapshot.record.checkpoint;
  const notes = [];
  if (pins.snapshotHash && pins.snapshotHash.toLowerCase() !== digest) {
    problems.push(`the snapshot's hash is ${digest}, not the pinned ${pins.snapshotHash.slice(0, 64)}: this user is being shown a different snapshot`);
  }
  if (pins.checkpoint && pins.checkpoint.toLowerCase() !== checkpoint) {
    problems.push(`the snapshot is bound to checkpoint ${checkpoint}, not the pinned ${pins.checkpoint.slice(0, 64)}`);
  }
  if (pins.root && pins.root.toLowerCase() !== toHex(parsed.root.hash)) {
    problems.push(`the ${parsed.asset.slice(0, 20)} root is ${toHex(parsed.root.hash)}, not the pinned ${pins.root.slice(0, 64)}: this user is being shown a different tree`);
  }
  if (!pins.snapshotHash && !pins.checkpoint && !pins.root) {
    notes.push("no snapshot hash or checkpoint pinned: compare the snapshot hash above with the published one to rule out a tree made for you alone");
  }
  return { ok: problems.length === 0, unusable: false, problems, notes, asset: parsed.asset, userId: parsed.userId,
           balance: parsed.balance.toString(), total: parsed.root.total.toString(), keyPinned: pinnedPublicKey !== null,
           snapshotHash: digest, checkpoint };
}

function verifierForm() {
  const form = document.getElementById("proof-verifier");
  if (!form) return;
  const out = document.getElementById("proof-verdict");
  const show = (verdict, lines) => {
    out.dataset.verdict = verdict;
    out.className = `notice ${verdict === "verified" ? "ok" : "error"}`;
    out.replaceChildren(...lines.map((text) => { const p = document.createElement("p"); p.textContent = text; return p; }));
    out.hidden = false;
  };
  const fileInput = form.elements.proof_file;
  fileInput.addEventListener("change", async () => {
    if (fileInput.files.length) form.elements.proof.value = await fileInput.files[0].text();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let proof;
    let keysDoc = null;
    try { proof = strictJsonParse(form.elements.proof.value, "proof"); } catch (err) {
      show("unusable", [err instanceof FormatError ? `malformed proof: ${err.message}` : `malformed proof: not JSON (${err.message})`]);
      return;
    }
    let pinned = null;
    if (form.elements.keys.value.trim()) {
      try { keysDoc = strictJsonParse(form.elements.keys.value, "keys"); pinned = pinnedKey(keysDoc, proof); } catch (err) { show("unusable", [`keys: ${err.message}`]); return; }
    }
    const pins = { snapshotHash: form.elements.snapshot_hash.value.trim(), checkpoint: form.elements.checkpoint.value.trim(),
                   root: form.elements.root.value.trim() };
    const check = await verifyLiabilityProof(proof, pinned, pins);
    if (check.unusable) { show("unusable", check.problems); return; }
    const head = check.ok
      ? `VERIFIED: ${check.userId} holds ${check.balance} ${check.asset} minor units, included in total liabilities of ${check.total}; snapshot signature valid${check.keyPinned ? "" : " (key embedded in the proof: pin it with keys.json)"}`
      : "NOT VERIFIED: " + check.problems.join("; ");
    show(check.ok ? "verified" : "refused", [head, `snapshot hash ${check.snapshotHash}`, `bound to checkpoint ${check.checkpoint}`, ...check.notes]);
    out.dataset.snapshotHash = check.snapshotHash;
  });
}

document.addEventListener("DOMContentLoaded", verifierForm);
