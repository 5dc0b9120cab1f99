// The TypeScript client the contract tests generate: types, an SDK over the fetch client, and zod
// schemas the SDK checks every successful answer against at run time. The input and the output
// folder come from the environment so the harness can point them anywhere.
import { defineConfig } from "@hey-api/openapi-ts";

export default defineConfig({
  input: process.env.CONTRACT_OPENAPI ?? "../../openapi/outpost.json",
  output: process.env.CONTRACT_TS_OUT ?? "../../target/contract/ts/client",
  plugins: [
    "@hey-api/typescript",
    "@hey-api/client-fetch",
    "zod",
    // Answers are checked; requests are not: the zod plugin makes z.string() of a binary
    // (`format: binary`) body, which refuses the Blob the SDK types ask for.
    { name: "@hey-api/sdk", validator: { request: false, response: "zod" } },
  ],
  logs: { file: false },
});
