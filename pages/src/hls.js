// hls.js, bundled apart: the viewer page loads it only when it falls back to HLS or plays
// a recording.
export { default as Hls } from "hls.js";
