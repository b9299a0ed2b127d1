// Verifies webhook requests with the official, unmodified `livekit-server-sdk` WebhookReceiver.
//
// Usage: node webhook_receiver.mjs verify
// Environment: WEBHOOK_REQUESTS (a JSON file: [{body, authorization}, ...], as the test's receiver got
// them), LIVEKIT_API_KEY, LIVEKIT_API_SECRET.
//
// Prints ONE JSON object: {scenario, events: [...]}, each event as the SDK parsed it (protobuf-es JSON
// with defaults emitted), or {error} for a request the receiver refused.

import { readFileSync } from 'node:fs';

import { WebhookReceiver } from 'livekit-server-sdk';

const receiver = new WebhookReceiver(process.env.LIVEKIT_API_KEY, process.env.LIVEKIT_API_SECRET);

async function main() {
  const requests = JSON.parse(readFileSync(process.env.WEBHOOK_REQUESTS, 'utf8'));
  const events = [];
  for (const { body, authorization } of requests) {
    try {
      const event = await receiver.receive(body, authorization);
      events.push(event.toJson({ emitDefaultValues: true }));
    } catch (e) {
      events.push({ error: e?.message ?? String(e) });
    }
  }
  process.stdout.write(`${JSON.stringify({ scenario: process.argv[2], events })}\n`);
}

main().catch((e) => {
  process.stdout.write(
    `${JSON.stringify({ scenario: process.argv[2], unexpectedError: { message: e?.message ?? String(e) }, stack: e?.stack ?? null })}\n`,
  );
});
