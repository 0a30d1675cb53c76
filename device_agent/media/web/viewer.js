// device-agent viewer: WHEP playback with live stats and push-to-talk. No build step.
// Query parameters: token (bearer token), whep (endpoint URL, default ./whep),
// trickle=1 (send the offer at once and every candidate by PATCH), audio=0 (video only).
//
// By default the offer is sent once it has its first local candidate (Chromium: ~10 ms; gathering
// "complete" comes ~120 ms later with mDNS host names), gathering is complete, or GATHER_WAIT_MS
// passed; the candidates found after that are trickled by PATCH. (With the device as DTLS client,
// every candidate trickled stalled about 1 join in 10 for 15 s, its ClientHello's retransmit
// back-off; the device now answers as the DTLS server and none did in 80: docs/performance.md.)
"use strict";

const params = new URLSearchParams(location.search);
const endpoint = new URL(params.get("whep") || "whep", location.href);
const token = params.get("token");
const trickleOnly = params.get("trickle") === "1";
const GATHER_WAIT_MS = 1000;
const withAudio = params.get("audio") !== "0";
const $ = (id) => document.getElementById(id);

// Everything a test or a person may want to read, in one place.
window.viewer = { state: "new", error: null, postToFirstFrameMs: null, postToAnswerMs: null, stats: {}, qoe: {},
                  timeline: {}, session: null };

let pc = null, resource = null, audioTx = null, micTrack = null, statsTimer = null, previous = null;
let qoeChannel = null, qoeTimer = null, qoePrev = null;

// Loss resilience at the receiver: on a lossy link (> JB_LOSS_PCT of the video packets lost or
// NACKed in the last second) every receiver's jitter buffer is asked to hold
// min(RTT * 1.5 + one frame interval, JB_MAX_MS), so a retransmission (one RTT) arrives before its
// frame is due; back to the browser's default (null) after JB_HOLD_MS without loss. Chromium's
// RTCRtpReceiver.jitterBufferTarget (ms); browsers without it keep their default.
const JB_LOSS_PCT = 1, JB_MAX_MS = 400, JB_HOLD_MS = 10000, JB_STEP_MS = 10;
const jitter = { supported: typeof RTCRtpReceiver !== "undefined" && "jitterBufferTarget" in RTCRtpReceiver.prototype,
                 targetMs: null, lossyAt: null, rttMs: null };
window.viewer.jitter = jitter;

// The target (ms, or null for the browser's default) for one stats interval: rttMs (null: unknown),
// lossPct (lost or NACKed share of the interval's packets), fps, now (ms).
function jitterTarget(rttMs, lossPct, fps, now) {
  if (rttMs !== null && rttMs !== undefined) jitter.rttMs = rttMs;
  if (lossPct > JB_LOSS_PCT) jitter.lossyAt = now;
  if (jitter.lossyAt === null || now - jitter.lossyAt >= JB_HOLD_MS || jitter.rttMs === null) return null;
  const frameMs = 1000 / (fps > 1 ? fps : 30);
  return Math.min(jitter.rttMs * 1.5 + frameMs, JB_MAX_MS);
}

function applyJitterTarget(s) {
  if (!pc || !jitter.supported || s.lossPct === undefined) return;
  const target = jitterTarget(s.rttMs, Math.max(s.lossPct, s.nackPct || 0), s.fps, s.time);
  const same = target === null ? jitter.targetMs === null
    : jitter.targetMs !== null && Math.abs(target - jitter.targetMs) < JB_STEP_MS;
  if (same) return;
  jitter.targetMs = target === null ? null : Math.round(target);
  for (const receiver of pc.getReceivers()) {
    try { receiver.jitterBufferTarget = jitter.targetMs; } catch (err) { jitter.error = String(err); }
  }
}

// Receiver reports: what this page renders, sent to the device every QOE_INTERVAL_MS over the "qoe"
// data channel (schema and definitions: device_agent/media/qoe.py, the same rules as FreezeCounter).
// A video freeze is a gap > 500 ms between presented frames after at least 5 fps; A/V sync is audio
// minus video playout position in the sender's clock (+ = audio early).
const QOE_INTERVAL_MS = 2000, FREEZE_GAP_MS = 500, FREEZE_MIN_FPS = 5, NTP_UNIX_OFFSET_MS = 2208988800000;
const render = { frames: 0, freezes: 0, frozenMs: 0, last: null, recent: [], first: null };

function onPresented(now) {
  if (render.last !== null && document.visibilityState === "visible") {
    const gap = now - render.last;
    if (gap > FREEZE_GAP_MS && render.recent.filter((t) => t > render.last - 1000).length >= FREEZE_MIN_FPS) {
      render.freezes += 1;
      render.frozenMs += gap;
      render.longestMs = Math.max(render.longestMs || 0, gap);
    }
  }
  if (render.frames === 0) render.firstAt = now;
  render.frames += 1;
  render.last = now;
  render.recent.push(now);
  while (render.recent.length && render.recent[0] < now - 2000) render.recent.shift();
}

let frameWatch = 0; // generation: a reconnect starts a new callback chain and ends the old one
// presented frames per second over the last 2 s (or since the first frame, if later)
function fpsSince(now) {
  if (render.firstAt === null || render.firstAt === undefined) return 0;
  const span = Math.max(250, Math.min(2000, now - render.firstAt));
  return (1000 * render.recent.filter((t) => t > now - span).length) / span;
}

function watchFrames(video) {
  if (!video.requestVideoFrameCallback) return false;
  const gen = ++frameWatch;
  const tick = (now) => { if (gen !== frameWatch) return; onPresented(now); video.requestVideoFrameCallback(tick); };
  video.requestVideoFrameCallback(tick);
  return true;
}
document.addEventListener("visibilitychange", () => { render.last = null; render.recent = []; });

function unixMs(ts) { return ts > 3e12 ? ts - NTP_UNIX_OFFSET_MS : ts; } // NTP-epoch ms -> Unix ms

async function qoeReport() {
  if (!pc || !qoeChannel || qoeChannel.readyState !== "open" || document.visibilityState !== "visible") return;
  const report = await pc.getStats();
  const now = performance.now(), wall = Date.now();
  const r = { v: 1, client: "chromium" };
  let video = null, audio = null, remoteVideo = null, rtt = null;
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") video = s;
    else if (s.type === "inbound-rtp" && s.kind === "audio") audio = s;
    else if (s.type === "remote-outbound-rtp" && s.kind === "video") remoteVideo = s;
    else if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded" && s.currentRoundTripTime !== undefined) rtt = s.currentRoundTripTime * 1000;
  });
  const rvfc = render.first !== null;
  if (video) {
    Object.assign(r, { recv: video.packetsReceived, lost: Math.max(0, video.packetsLost || 0), nack: video.nackCount,
                       pli: video.pliCount, w: video.frameWidth, h: video.frameHeight });
    if (rvfc) {
      Object.assign(r, { frames: render.frames, freezes: render.freezes, freeze_ms: Math.round(render.frozenMs),
                         fps: fpsSince(now),
                         stall_ms: render.last === null ? 0 : Math.round(now - render.last) });
      const gapNow = render.last === null ? 0 : now - render.last; // the longest freeze since the last report
      r.freeze_max_ms = Math.round(Math.max(render.longestMs || 0, gapNow > FREEZE_GAP_MS ? gapNow : 0));
      render.longestMs = 0;
    } else { // no requestVideoFrameCallback: Chromium's own freeze counters
      Object.assign(r, { frames: video.framesDecoded, fps: video.framesPerSecond || 0, freezes: video.freezeCount,
                         freeze_ms: Math.round((video.totalFreezesDuration || 0) * 1000) });
    }
    const p = qoePrev;
    if (p && p.video) {
      const dt = (video.timestamp - p.video.timestamp) / 1000, emitted = video.jitterBufferEmittedCount - p.video.jitterBufferEmittedCount;
      if (dt > 0) r.kbps = ((video.bytesReceived - p.video.bytesReceived) * 8) / 1000 / dt;
      if (emitted > 0) r.jb_ms = (1000 * (video.jitterBufferDelay - p.video.jitterBufferDelay)) / emitted;
      const decoded = video.framesDecoded - p.video.framesDecoded;
      if (decoded > 0) r.decode_ms = (1000 * (video.totalDecodeTime - p.video.totalDecodeTime)) / decoded;
    }
  }
  if (audio) {
    const p = qoePrev && qoePrev.audio;
    if (p && audio.totalSamplesReceived > p.totalSamplesReceived) {
      r.conceal_pct = (100 * (audio.concealedSamples - p.concealedSamples)) / (audio.totalSamplesReceived - p.totalSamplesReceived);
    }
    if (audio.interruptionCount !== undefined) { // Chromium's: concealment runs over 150 ms
      render.afreezes = audio.interruptionCount;
      render.afrozenMs = (audio.totalInterruptionDuration || 0) * 1000;
    } else if (p) { // else: an interval concealing more than 200 ms counts as one (Opus plays out at 48 kHz)
      const concealedMs = (1000 * (audio.concealedSamples - p.concealedSamples)) / 48000;
      if (concealedMs > 200 && audio.concealmentEvents > p.concealmentEvents) { render.afreezes += 1; render.afrozenMs += concealedMs; }
    }
    r.afreezes = render.afreezes || 0;
    r.afreeze_ms = Math.round(render.afrozenMs || 0);
  }
  if (video && audio && video.estimatedPlayoutTimestamp && audio.estimatedPlayoutTimestamp) {
    r.av_ms = unixMs(audio.estimatedPlayoutTimestamp) - unixMs(video.estimatedPlayoutTimestamp);
  }
  if (video && remoteVideo && video.estimatedPlayoutTimestamp && remoteVideo.remoteTimestamp) {
    // the sender's clock now (its last SR + the time since that SR arrived) minus what plays now
    r.play_ms = unixMs(remoteVideo.remoteTimestamp) + (wall - remoteVideo.timestamp) - unixMs(video.estimatedPlayoutTimestamp);
  }
  if (rtt !== null) r.rtt_ms = rtt;
  if (window.viewer.postToFirstFrameMs !== null) r.ttff_ms = window.viewer.postToFirstFrameMs;
  for (const k of Object.keys(r)) {
    if (typeof r[k] === "number") r[k] = Number.isFinite(r[k]) ? Math.round(r[k] * 10) / 10 : undefined;
    if (r[k] === undefined) delete r[k];
  }
  qoePrev = { video, audio };
  window.viewer.qoe = r;
  qoeChannel.send(JSON.stringify(r));
}

function headers(type) {
  const h = type ? { "Content-Type": type } : {};
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

function setState(state, error) {
  window.viewer.state = state;
  if (error) window.viewer.error = String(error);
  $("state").textContent = state;
  $("state").className = state;
  $("error").textContent = error ? String(error) : "";
}

async function patchCandidates(lines) {
  if (!resource || !lines.length) return;
  const body = "a=mid:0\r\n" + lines.join("\r\n") + "\r\n";
  await fetch(resource, { method: "PATCH", headers: headers("application/trickle-ice-sdpfrag"), body });
}

// The join step by step (performance.now() ms; origin = performance.timeOrigin, to line it up with
// the device's join_ms on one machine): connect, offer, candidate (the first), gathered, post, answer,
// remote, ice, dtls,
// track, frame (first requestVideoFrameCallback) with the frame's receiveTime and, at that moment,
// the receiver's getStats figures (firstStats: jitter buffer, decode, assembly).
function mark(step, at) {
  const t = window.viewer.timeline;
  if (t[step] === undefined) t[step] = at === undefined ? performance.now() : at;
}

async function connect() {
  await disconnect();
  window.viewer.timeline = { origin: performance.timeOrigin };
  window.viewer.session = null;
  mark("connect");
  Object.assign(jitter, { targetMs: null, lossyAt: null, rttMs: null }); // a new peer starts at the default
  setState("connecting");
  pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  audioTx = withAudio ? pc.addTransceiver("audio", { direction: "sendrecv" }) : null;
  qoeChannel = pc.createDataChannel("qoe");
  const stream = new MediaStream();
  pc.ontrack = (e) => { mark("track"); stream.addTrack(e.track); $("video").srcObject = stream; };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "connected") mark("dtls");
    setState(pc.connectionState);
  };
  pc.oniceconnectionstatechange = () => (pc.iceConnectionState === "connected" || pc.iceConnectionState === "completed") && mark("ice");

  // Candidates not in the offer (found after it was sent) follow by PATCH.
  const pending = [];
  let inOffer = null;
  pc.onicecandidate = (e) => {
    const line = e.candidate ? "a=" + e.candidate.candidate : "a=end-of-candidates";
    if (e.candidate && !e.candidate.candidate) return;
    if (e.candidate) mark("candidate");
    if (inOffer && inOffer.has(line)) return; // already sent in the offer
    if (resource) patchCandidates([line]).catch(() => {}); else pending.push(line);
  };

  let firstCandidate = null;
  const haveCandidate = new Promise((done) => { firstCandidate = done; });
  pc.addEventListener("icecandidate", (e) => e.candidate && e.candidate.candidate && firstCandidate());
  await pc.setLocalDescription(await pc.createOffer());
  mark("offer");
  if (!trickleOnly && pc.iceGatheringState !== "complete" && window.viewer.timeline.candidate === undefined) {
    await new Promise((done) => {
      setTimeout(done, GATHER_WAIT_MS);
      haveCandidate.then(done);
      pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && done());
    });
  }
  inOffer = new Set((pc.localDescription.sdp.match(/^a=candidate:.*$/gm) || []).map((l) => l.trim()));
  mark("gathered");
  const posted = performance.now();
  mark("post", posted);
  const response = await fetch(endpoint, { method: "POST", headers: headers("application/sdp"), body: pc.localDescription.sdp });
  if (response.status !== 201) {
    setState("error", `WHEP ${response.status}: ${(await response.text()).trim()}`);
    return;
  }
  resource = new URL(response.headers.get("Location"), endpoint);
  window.viewer.session = resource.pathname.split("/").pop();
  window.viewer.postToAnswerMs = performance.now() - posted;
  mark("answer");
  await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
  mark("remote");
  patchCandidates(pending.splice(0).filter((line) => !inOffer.has(line))).catch(() => {});

  const video = $("video");
  const timeline = window.viewer.timeline;
  const onFrame = (now, meta) => {
    window.viewer.postToFirstFrameMs = performance.now() - posted;
    $("first").textContent = window.viewer.postToFirstFrameMs.toFixed(0) + " ms";
    mark("frame");
    if (meta && meta.receiveTime !== undefined) timeline.frameReceive = meta.receiveTime;
    if (meta && meta.processingDuration !== undefined) timeline.frameProcessingMs = meta.processingDuration * 1000;
    if (pc) pc.getStats().then((report) => report.forEach((r) => {
      if (r.type !== "inbound-rtp" || r.kind !== "video") return;
      timeline.firstStats = { framesDecoded: r.framesDecoded, keyFramesDecoded: r.keyFramesDecoded,
        jitterBufferMs: (1000 * (r.jitterBufferDelay || 0)) / Math.max(1, r.jitterBufferEmittedCount || 0),
        decodeMs: (1000 * (r.totalDecodeTime || 0)) / Math.max(1, r.framesDecoded || 0),
        assemblyMs: r.totalAssemblyTime !== undefined ? 1000 * r.totalAssemblyTime : null,
        packets: r.packetsReceived, nacks: r.nackCount, plis: r.pliCount };
    })).catch(() => {});
  };
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(onFrame);
  else video.addEventListener("loadeddata", onFrame, { once: true });
  Object.assign(render, { frames: 0, freezes: 0, frozenMs: 0, last: null, recent: [], first: null, firstAt: null, afreezes: 0, afrozenMs: 0 });
  if (watchFrames(video)) render.first = 0;
  statsTimer = setInterval(updateStats, 1000);
  qoeTimer = setInterval(() => qoeReport().catch(() => {}), QOE_INTERVAL_MS);
}

async function disconnect() {
  clearInterval(statsTimer);
  clearInterval(qoeTimer);
  frameWatch += 1;
  qoeChannel = null; qoePrev = null;
  if (resource) fetch(resource, { method: "DELETE", headers: headers() }).catch(() => {});
  resource = null;
  if (pc) pc.close();
  pc = null; previous = null;
}

async function updateStats() {
  if (!pc) return;
  const report = await pc.getStats();
  const s = { time: performance.now() };
  report.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") {
      Object.assign(s, { videoBytes: r.bytesReceived, framesDecoded: r.framesDecoded, framesReceived: r.framesReceived,
                         fps: r.framesPerSecond || 0, videoPacketsLost: r.packetsLost, videoPackets: r.packetsReceived,
                         videoNacks: r.nackCount || 0,
                         keyFramesDecoded: r.keyFramesDecoded, frameWidth: r.frameWidth, frameHeight: r.frameHeight });
    } else if (r.type === "inbound-rtp" && r.kind === "audio") {
      Object.assign(s, { audioPackets: r.packetsReceived, audioBytes: r.bytesReceived, audioSamples: r.totalSamplesReceived });
    } else if (r.type === "candidate-pair" && r.nominated && r.state === "succeeded") {
      s.rttMs = r.currentRoundTripTime !== undefined ? r.currentRoundTripTime * 1000 : null;
    }
  });
  if (previous && s.videoBytes !== undefined) {
    const dt = (s.time - previous.time) / 1000;
    s.bitrateKbps = ((s.videoBytes - previous.videoBytes) * 8) / 1000 / dt;
    const lost = s.videoPacketsLost - previous.videoPacketsLost, got = s.videoPackets - previous.videoPackets;
    s.lossPct = got + lost > 0 ? (100 * lost) / (got + lost) : 0;
    s.nackPct = got + lost > 0 ? (100 * (s.videoNacks - previous.videoNacks)) / (got + lost) : 0;
  }
  previous = s;
  applyJitterTarget(s);
  window.viewer.stats = s;
  $("bitrate").textContent = s.bitrateKbps !== undefined ? s.bitrateKbps.toFixed(0) + " kbit/s" : "–";
  $("fps").textContent = s.fps !== undefined ? s.fps.toFixed(1) + " fps" : "–";
  $("rtt").textContent = s.rttMs != null ? s.rttMs.toFixed(1) + " ms" : "–";
  $("loss").textContent = s.lossPct !== undefined ? s.lossPct.toFixed(1) + " %" : "–";
}

// Push-to-talk: the microphone track is attached only while the button is held.
async function startTalking() {
  if (!audioTx) return;
  try {
    if (!micTrack) micTrack = (await navigator.mediaDevices.getUserMedia({ audio: true })).getAudioTracks()[0];
    await audioTx.sender.replaceTrack(micTrack);
    $("talk").classList.add("active");
  } catch (err) {
    $("error").textContent = "microphone: " + err;
  }
}
async function stopTalking() {
  if (audioTx) await audioTx.sender.replaceTrack(null);
  $("talk").classList.remove("active");
}

$("talk").addEventListener("pointerdown", startTalking);
$("talk").addEventListener("pointerup", stopTalking);
$("talk").addEventListener("pointerleave", stopTalking);
$("unmute").addEventListener("click", () => { const v = $("video"); v.muted = !v.muted; $("unmute").textContent = v.muted ? "Unmute" : "Mute"; });
$("reconnect").addEventListener("click", () => connect().catch((e) => setState("error", e)));
window.addEventListener("pagehide", disconnect);
window.viewerControls = { connect, disconnect, startTalking, stopTalking };

connect().catch((e) => setState("error", e));
