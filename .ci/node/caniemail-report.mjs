// Reads {"html": "...", "clients": ["gmail.*", ...]} on stdin and writes, as JSON,
// every HTML/CSS feature of the document that caniemail's data says one of those
// clients does not support ("error") or supports only partly ("warning").
import { caniemail, rawData } from "caniemail";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const { html, clients } = JSON.parse(Buffer.concat(chunks).toString("utf8"));
// caniemail throws when a feature has no data for a client (word-wrap on Gmail
// for iOS, say). Such gaps are recorded as unknown ("u"), reported separately, and
// the check goes on for every other feature and client.
const unknown = [];
for (const feature of rawData.data) {
  for (const client of clients) {
    const [family, platform] = client.split(".");
    const stats = (feature.stats[family] ??= {});
    if (stats[platform] === undefined) {
      stats[platform] = { "0000-00": "u" };
      unknown.push({ feature: feature.title, client });
    }
  }
}
const result = caniemail({ clients, html });
const found = [];
for (const [kind, map] of [["error", result.issues.errors], ["warning", result.issues.warnings]]) {
  // Keyed by client; each holds the issues (one per use of a feature) for it.
  for (const [client, issues] of map) {
    for (const issue of issues) {
      found.push({ kind, client, feature: issue.title, notes: issue.notes ?? [] });
    }
  }
}
process.stdout.write(JSON.stringify(found));
