// Build dist/: one self-contained ESM bundle (dist/index.js, also copied to
// dist/agentvm-client.mjs for the web console) and the type declarations.
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "dist");
rmSync(dist, { recursive: true, force: true });
mkdirSync(dist, { recursive: true });

await build({
  entryPoints: [join(root, "src/index.ts")],
  outfile: join(dist, "index.js"),
  bundle: true,
  format: "esm",
  platform: "neutral", // Node 18+ and browsers: only fetch, TextDecoder, atob/btoa
  target: ["es2020"],
  sourcemap: false,
  legalComments: "none",
  logLevel: "warning",
});
copyFileSync(join(dist, "index.js"), join(dist, "agentvm-client.mjs"));

execFileSync(
  process.execPath,
  [join(root, "node_modules/typescript/bin/tsc"), "-p", join(root, "tsconfig.json"),
    "--emitDeclarationOnly", "--outDir", dist],
  { stdio: "inherit" },
);
copyFileSync(join(root, "src/schema.d.ts"), join(dist, "schema.d.ts"));
writeFileSync(join(dist, "agentvm-client.d.mts"), 'export * from "./index.js";\n');
