// Render chat-template cases with @huggingface/jinja (the Jinja of transformers.js and the Hub).
//
// Run by matrix/probe/render_node.py: `node render_hf_jinja.mjs < JOB.json`.
//
// Job (JSON on stdin):
//   {"template": str, "special": {bos_token, eos_token, ...},
//    "cases": [{"id", "messages", "tools", "add_generation_prompt", "template_kwargs"}],
//    "limits": {"render_chars": int}, "module_url": "file:///.../dist/index.js" (optional)}
// Output (stdout, one JSON object per line, flushed as each case finishes, in case order):
//   {"": {"ready": true, "package_version": ..., "node": ...}}   first: the module is loaded
//   {"<case id>": {"text": "..."}} | {"<case id>": {"error": "...", "kind": K, "name": N}}
//   The case lines together are the mapping {case_id: {"text"} | {"error"}}.
//   K: "template" (the engine rejected the template: Error, SyntaxError), "output-limit" (over
//   render_chars), "limit" (stack or array-length limits of the engine), "crash" (TypeError,
//   ReferenceError: a bug of the engine).
// The wall-clock limit is enforced by the caller (it kills this process); the output-size limit
// is enforced here: on the finished text, and while rendering by counting the characters every
// block evaluation returns (an over-count by the nesting depth), stopping a runaway at
// RUNAWAY_FACTOR times the limit long before the engine's own string-length limit.

import { readFileSync, writeSync } from "node:fs";

const RUNAWAY_FACTOR = 8;

class OutputLimit extends Error {
  constructor(message) {
    super(message);
    this.name = "OutputLimit";
  }
}

function emit(obj) {
  // one write per line; fs.writeSync(1) is synchronous, so lines are never lost on a later crash
  const buf = Buffer.from(JSON.stringify(obj) + "\n", "utf8");
  let off = 0;
  while (off < buf.length) {
    try {
      off += writeSync(1, buf, off, buf.length - off);
    } catch (e) {
      if (e.code === "EAGAIN") continue;
      throw e;
    }
  }
}

function kindOf(err) {
  if (err instanceof OutputLimit) return "output-limit";
  if (err instanceof RangeError) {
    const msg = String(err.message || "");
    if (/Invalid string length/i.test(msg)) return "output-limit";
    if (/call stack|Invalid array length|out of memory/i.test(msg)) return "limit";
  }
  // the engine throws Error and SyntaxError; TypeError / ReferenceError are bugs of the engine
  if (err instanceof TypeError || err instanceof ReferenceError) return "crash";
  return "template";
}

function describe(err) {
  if (err && typeof err === "object") {
    return { name: err.name || err.constructor?.name || "Error", message: String(err.message ?? err) };
  }
  return { name: typeof err, message: String(err) };
}

const job = JSON.parse(readFileSync(0, "utf8"));
const maxChars = Number(job.limits?.render_chars ?? 1000000);

let mod;
try {
  mod = await import(job.module_url || "@huggingface/jinja");
} catch (err) {
  const d = describe(err);
  emit({ "": { ready: false, error: `cannot import @huggingface/jinja: ${d.name}: ${d.message}` } });
  process.exit(3);
}
const { Template, Interpreter } = mod;

// The runaway guard: count what every block evaluation returns (when the engine has one).
let produced = 0;
let budget = Infinity;
const proto = Interpreter?.prototype;
const guarded = !!(proto && typeof proto.evaluateBlock === "function");
if (guarded) {
  const original = proto.evaluateBlock;
  proto.evaluateBlock = function (...args) {
    const result = original.apply(this, args);
    const value = result?.value;
    if (typeof value === "string") {
      produced += value.length;
      if (produced > budget) {
        throw new OutputLimit(`rendered output exceeds ${maxChars} characters (runaway output stopped)`);
      }
    }
    return result;
  };
}

emit({ "": { ready: true, node: process.version, guarded, package_version: job.package_version ?? null } });

let template = null;
let parseError = null;
try {
  template = new Template(job.template);
} catch (err) {
  parseError = err;
}

for (const c of job.cases) {
  let out;
  try {
    if (parseError) throw parseError;
    const ctx = { ...(job.special || {}) };
    ctx.messages = c.messages;
    ctx.tools = c.tools ?? null;
    ctx.add_generation_prompt = c.add_generation_prompt ?? true;
    Object.assign(ctx, c.template_kwargs || {});
    produced = 0;
    budget = maxChars * RUNAWAY_FACTOR;
    const text = template.render(ctx);
    budget = Infinity;
    if (typeof text !== "string") throw new TypeError(`render returned ${typeof text}, not a string`);
    if (text.length > maxChars) throw new OutputLimit(`rendered output exceeds ${maxChars} characters`);
    out = { text };
  } catch (err) {
    budget = Infinity;
    const d = describe(err);
    const kind = kindOf(err);
    const message = kind === "output-limit" && !(err instanceof OutputLimit)
      ? `rendered output exceeds ${maxChars} characters (${d.name}: ${d.message})`
      : d.message;
    out = { error: message, name: d.name, kind };
  }
  emit({ [c.id]: out });
}
