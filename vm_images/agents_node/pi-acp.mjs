#!/usr/local/bin/agentvm-node
// agentvm's launcher of pi-acp (docs/agents.md, "pi"). Run as
// `agentvm-node pi-acp.mjs`: the interpreter is the execute-only copy, so the agent is
// non-dumpable from its execve (sandbox code cannot open its pipes or ptrace it).
//
// pi ignores ANTHROPIC_BASE_URL: its provider's base URL comes from models.json under
// its agent directory. The sandbox's root is read-only and /home/user is the user's,
// so the files are (re)written here at every start: the anthropic provider always
// points at the in-sandbox gateway; other settings the user made are kept.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

const NPM = "/opt/agentvm/npm/pi/node_modules";

function readObject(path) {
  try {
    const value = JSON.parse(readFileSync(path, "utf8"));
    return value && typeof value === "object" && !Array.isArray(value) ? value : {};
  } catch {
    return {};
  }
}

function writeJson(path, value) {
  writeFileSync(path, JSON.stringify(value, null, 2) + "\n", { mode: 0o600 });
}

const dir = process.env.PI_CODING_AGENT_DIR || join(homedir(), ".pi", "agent");
mkdirSync(dir, { recursive: true, mode: 0o700 });

const modelsPath = join(dir, "models.json");
const models = readObject(modelsPath);
const providers =
  models.providers && typeof models.providers === "object" ? models.providers : {};
const anthropic =
  providers.anthropic && typeof providers.anthropic === "object" ? providers.anthropic : {};
providers.anthropic = {
  ...anthropic,
  baseUrl: process.env.ANTHROPIC_BASE_URL || "http://127.0.0.1:4141",
};
models.providers = providers;
writeJson(modelsPath, models);

const settingsPath = join(dir, "settings.json");
const settings = readObject(settingsPath);
settings.defaultProvider ??= "anthropic";
if (process.env.AGENTVM_MODEL) settings.defaultModel = process.env.AGENTVM_MODEL;
settings.defaultModel ??= "claude-sonnet-4-5";
settings.enableInstallTelemetry = false;
// else pi-acp prefixes the first answer with a "pi v… ---" banner (the agent's text
// becomes fixBug's summary)
settings.quietStartup ??= true;
writeJson(settingsPath, settings);

// pi-acp spawns pi for each session; pi.mjs runs it with agentvm-node too.
process.env.PI_ACP_PI_COMMAND ??= "/opt/agentvm/agents/pi.mjs";
await import(`${NPM}/pi-acp/dist/index.js`);
