// Validates an AsyncAPI document with the official parser (@asyncapi/parser), resolving relative
// $refs from the document's folder. Prints one line per diagnostic; exits 1 on any error, else 0.
import { Parser, fromFile } from "@asyncapi/parser";

const path = process.argv[2];
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, path).parse({ validateOptions: { allowedSeverity: { warning: true, info: true, hint: true } } });
const severities = ["error", "warning", "info", "hint"];
for (const d of diagnostics) {
  console.log(`${severities[d.severity]} ${d.code} ${d.path.join("/")}: ${d.message}`);
}
if (document === undefined || diagnostics.some((d) => d.severity === 0)) {
  process.exit(1);
}
const channels = document.channels().all().map((c) => `${c.id()}=${c.address()}`);
const messages = document.allMessages().all().length;
console.log(`VALID asyncapi ${document.version()}: ${channels.join(" ")}; ${messages} messages`);
