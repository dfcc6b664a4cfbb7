// Reads {"config": {...}, "documents": {"name": "<!doctype html>..."}} on stdin and
// writes, as JSON, html-validate's errors for each document: [name, rule, message,
// line, excerpt].
import { HtmlValidate } from "html-validate";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const { config, documents } = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const validator = new HtmlValidate(config);
const found = [];
for (const [name, html] of Object.entries(documents)) {
  const report = await validator.validateString(html, name);
  for (const result of report.results) {
    for (const message of result.messages) {
      if (message.severity < 2) continue;
      found.push([name, message.ruleId, message.message, message.line, message.selector]);
    }
  }
}
process.stdout.write(JSON.stringify(found));
