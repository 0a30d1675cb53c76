// device-agent viewer: WHEP playback with live stats and push-to-talk. No build step.
// Query parameters: token (bearer token), whep (endpoint URL, default ./whep),
// trickle=1 (send the offer at once and every candidate by PATCH), audio=0 (video only).
//
// By default the offer waits for ICE gathering (host candidates: a few ms), for at most
// GATHER_WAIT_MS; candidates found after that are trickled by PATCH. Measured against aiortc 1.16 /
// aioice 0.13: with every candidate trickled, about 1 join in 10 stalls for 15 s (DTLS retransmit
// back-off) when 4 viewers join at once; with the candidates in the offer, none did (docs/performance.md).
"use strict";

const params = new URLSearchParams(location.search);
const endpoint = new URL(params.get("whep") || "whep", location.href);
const token = params.get("token");
const trickleOnly = params.get("trickle") === "1";
const GATHER_WAIT_MS = 1000;
const withAudio = params.get("audio") !== "0";
const $ = (id) => document.getElementById(id);

// Everything a test or a person may want to read, in one place.
window.viewer = { state: "new", error: null, postToFirstFrameMs: null, postToAnswerMs: null, stats: {} };

let pc = null, resource = null, audioTx = null, micTrack = null, statsTimer = null, previous = null;

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

async function connect() {
  await disconnect();
  setState("connecting");
  pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  audioTx = withAudio ? pc.addTransceiver("audio", { direction: "sendrecv" }) : null;
  const stream = new MediaStream();
  pc.ontrack = (e) => { stream.addTrack(e.track); $("video").srcObject = stream; };
  pc.onconnectionstatechange = () => setState(pc.connectionState);

  // Candidates not in the offer (found after it was sent) follow by PATCH.
  const pending = [];
  let inOffer = null;
  pc.onicecandidate = (e) => {
    const line = e.candidate ? "a=" + e.candidate.candidate : "a=end-of-candidates";
    if (e.candidate && !e.candidate.candidate) return;
    if (inOffer && inOffer.has(line)) return; // already sent in the offer
    if (resource) patchCandidates([line]).catch(() => {}); else pending.push(line);
  };

  await pc.setLocalDescription(await pc.createOffer());
  if (!trickleOnly && pc.iceGatheringState !== "complete") {
    await new Promise((done) => {
      setTimeout(done, GATHER_WAIT_MS);
      pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && done());
    });
  }
  inOffer = new Set((pc.localDescription.sdp.match(/^a=candidate:.*$/gm) || []).map((l) => l.trim()));
  const posted = performance.now();
  const response = await fetch(endpoint, { method: "POST", headers: headers("application/sdp"), body: pc.localDescription.sdp });
  if (response.status !== 201) {
    setState("error", `WHEP ${response.status}: ${(await response.text()).trim()}`);
    return;
  }
  resource = new URL(response.headers.get("Location"), endpoint);
  window.viewer.postToAnswerMs = performance.now() - posted;
  await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
  patchCandidates(pending.splice(0).filter((line) => !inOffer.has(line))).catch(() => {});

  const video = $("video");
  const onFrame = () => {
    window.viewer.postToFirstFrameMs = performance.now() - posted;
    $("first").textContent = window.viewer.postToFirstFrameMs.toFixed(0) + " ms";
  };
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(onFrame);
  else video.addEventListener("loadeddata", onFrame, { once: true });
  statsTimer = setInterval(updateStats, 1000);
}

async function disconnect() {
  clearInterval(statsTimer);
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
  }
  previous = s;
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
