"""The pieces of `vedit.editors.rerender` (Rerender-A-Video), one seam per module: `keyframes` (which
frames are keys, flows between them), `schedule` (constraint periods, the wavefront's calls), `fusion`
(AdaIN, pixel-aware fusion, colour correction), `attention` (cross-frame K/V), `graphs` (CUDA-graph
replay of wavefront calls) and `sampler` (the key-frame DDIM loop). The editor itself, and every name
here, is importable from `vedit.editors.rerender`."""
