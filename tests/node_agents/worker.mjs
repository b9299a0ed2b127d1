// A real @livekit/agents (Node) worker for the integration tests, shaped by environment variables.
//
//   TEST_AGENT_NAME      agent name to register with (empty: automatic dispatch)
//   TEST_JOB_TYPE        room | participant | publisher (the worker's JobType; default room)
//   TEST_BEHAVIOUR       what each job's entrypoint does (default stay):
//                          stay:     ctx.connect() and stay in the room until the job is ended from outside
//                          shutdown: ctx.connect(), wait TEST_SHUTDOWN_AFTER seconds, then ctx.shutdown()
//                          crash:    ctx.connect(), wait TEST_SHUTDOWN_AFTER seconds, then throw
//                          exit:     ctx.connect(), wait TEST_SHUTDOWN_AFTER seconds, then the job process
//                                    exits with status 1 (a crash the framework does not catch)
//                          idle:     never connect; return and wait for the job to be ended from outside
//   TEST_SHUTDOWN_AFTER  seconds for shutdown / crash / exit (default 0)
//   TEST_ROOMS_PREFIX    accept only offers for rooms whose name starts with this (the others are
//                        rejected: request.reject()); empty: accept every offer
//   TEST_JOBS_FILE       JSON lines, one per event of each job: {"event": "start" | "connected" |
//                        "disconnected" | "end", "job_id", "pid", "room", "t" (ms since the epoch), ...}
//   TEST_HEALTH_PORT     port of the worker's health server (the framework binds 8081 in `start`
//                        unless told otherwise, and two workers would collide)
//
// Run as a user runs a Node agent: `node worker.mjs start`, with LIVEKIT_URL, LIVEKIT_API_KEY and
// LIVEKIT_API_SECRET in the environment. The framework forks job processes that import this same file
// and call the default export's `entry`.
import { AutoSubscribe, JobRequest, ServerOptions, cli, defineAgent } from '@livekit/agents';
import { RoomEvent } from '@livekit/rtc-node';
import { appendFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const AGENT_NAME = process.env.TEST_AGENT_NAME ?? '';
const BEHAVIOUR = process.env.TEST_BEHAVIOUR || 'stay';
const SHUTDOWN_AFTER = Number(process.env.TEST_SHUTDOWN_AFTER || '0');
const JOBS_FILE = process.env.TEST_JOBS_FILE;
const ROOMS_PREFIX = process.env.TEST_ROOMS_PREFIX || '';
// livekit_agent.proto JobType: JT_ROOM = 0, JT_PUBLISHER = 1, JT_PARTICIPANT = 2.
const JOB_TYPES = { room: 0, publisher: 1, participant: 2 };
const JOB_TYPE = JOB_TYPES[process.env.TEST_JOB_TYPE || 'room'];
if (JOB_TYPE === undefined) throw new Error(`TEST_JOB_TYPE: unknown job type ${process.env.TEST_JOB_TYPE}`);
if (!['stay', 'shutdown', 'crash', 'exit', 'idle'].includes(BEHAVIOUR)) {
  throw new Error(`TEST_BEHAVIOUR: unknown behaviour ${BEHAVIOUR}`);
}

/** One JSON line per event; small appends to an O_APPEND file do not interleave between processes. */
function record(event, fields) {
  if (!JOBS_FILE) throw new Error('TEST_JOBS_FILE is not set');
  appendFileSync(JOBS_FILE, JSON.stringify({ event, pid: process.pid, t: Date.now(), ...fields }) + '\n');
}

function claimsOf(token) {
  return JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());
}

const sleep = (seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));

export default defineAgent({
  entry: async (ctx) => {
    const job = ctx.job;
    const base = { job_id: job.id, room: job.room?.name ?? '' };
    const claims = claimsOf(ctx.info.token);
    record('start', {
      ...base,
      room_sid: job.room?.sid ?? '',
      dispatch_id: job.dispatchId,
      agent_name: job.agentName,
      metadata: job.metadata,
      type: job.type,
      participant: job.participant?.identity ?? '',
      worker_id: ctx.workerId,
      identity: claims.sub,
      token_claims: claims,
    });
    ctx.addShutdownCallback(async () => record('end', base));
    if (BEHAVIOUR === 'idle') return;

    ctx.room.on(RoomEvent.Disconnected, (reason) => record('disconnected', { ...base, reason }));
    await ctx.connect(undefined, AutoSubscribe.SUBSCRIBE_ALL);
    record('connected', { ...base, identity: ctx.room.localParticipant?.identity ?? '' });
    if (BEHAVIOUR === 'stay') return;

    await sleep(SHUTDOWN_AFTER);
    if (BEHAVIOUR === 'shutdown') ctx.shutdown('done');
    else if (BEHAVIOUR === 'crash') throw new Error('entrypoint crashed on purpose');
    else if (BEHAVIOUR === 'exit') process.exit(1);
  },
});

/** Accept offers (of TEST_ROOMS_PREFIX rooms), with a name and an attribute the job's token shows. */
async function requestFunc(request) {
  if (!(request instanceof JobRequest)) throw new Error('not a JobRequest');
  if (!(request.room?.name ?? '').startsWith(ROOMS_PREFIX)) {
    await request.reject();
    return;
  }
  await request.accept('Test Agent', '', '', { test: 'yes' });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  cli.runApp(
    new ServerOptions({
      agent: fileURLToPath(import.meta.url),
      agentName: AGENT_NAME,
      serverType: JOB_TYPE,
      requestFunc,
      // A fixed load: a busy test machine must not make the worker report itself full (0.7 in `start`).
      loadFunc: async () => 0.1,
      numIdleProcesses: 1,
      host: '127.0.0.1',
      port: Number(process.env.TEST_HEALTH_PORT || '0'),
    }),
  );
}
