#!/usr/local/bin/agentvm-node
// pi itself, as pi-acp spawns it (PI_ACP_PI_COMMAND): the kernel runs this script with
// the execute-only interpreter named above, so pi is non-dumpable from its execve too
// (pi's own `#!/usr/bin/env node` would run the readable node).
await import("/opt/agentvm/npm/pi/node_modules/@earendil-works/pi-coding-agent/dist/bundle/cli.js");
