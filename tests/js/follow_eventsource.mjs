// Follow one URL with npm's `eventsource` (the EventSource of Node apps) and print what it saw
// as JSON: how many connections opened, the ids and types of the events, and whether the source
// ended by itself (CLOSED) within the bound given in milliseconds.
//
//   node follow_eventsource.mjs URL BOUND_MS
import { EventSource } from 'eventsource';

const [url, boundMs] = process.argv.slice(2);
const source = new EventSource(url);
const seen = { opens: 0, ids: [], types: [], closed: false };
source.onopen = () => { seen.opens += 1; };
for (const type of ['start', 'delta', 'usage', 'done', 'error', 'cancelled']) {
  source.addEventListener(type, (event) => {
    // The source's own connection failures are `error` events too, without data.
    if (typeof event.data !== 'string') return;
    seen.ids.push(Number(event.lastEventId));
    seen.types.push(type);
  });
}
const closed = new Promise((resolve) => {
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) resolve(); };
});
await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, Number(boundMs)))]);
seen.closed = source.readyState === EventSource.CLOSED;
source.close();
process.stdout.write(JSON.stringify(seen) + '\n');
