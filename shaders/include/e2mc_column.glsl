// Shared by e2mc_column.comp (shared-memory sort) and e2mc_column_reg.comp
// (register sort): the per-column kernel's constants, bindings, push
// constants and shared memory. See e2mc_column.comp.
#ifndef E2MCVK_E2MC_COLUMN_GLSL
#define E2MCVK_E2MC_COLUMN_GLSL

#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;    // invocations, a power of two
layout(constant_id = 1) const uint NMAX = 4096; // sortable rows, a power of two
layout(constant_id = 2) const uint BOUND = 0;   // see bound.glsl
layout(constant_id = 3) const bool GRAD = true;
layout(local_size_x_id = 0) in;

layout(binding = 0) readonly buffer Z { float z[]; };          // N x D
layout(binding = 1) writeonly buffer X { float x[]; };         // N x D, centred
layout(binding = 2) writeonly buffer H { float h[]; };         // D entropies
layout(binding = 3) writeonly buffer V { float variance[]; };  // D column variances
layout(binding = 4) writeonly buffer G { float g[]; };         // N x D, d(mean H)/d(bounded)

layout(push_constant) uniform Push {
	uint n;        // rows
	uint d;        // columns
	uint npad;     // rows padded to a power of two, <= NMAX
	uint m;        // spacing window
	float eps;
	float scale;   // (n + 1) / m
	float gcoef;   // scale / (n - m) / d
	uint zOff, xOff, hOff, vOff, gOff;
};

shared uvec2 kv[NMAX];

#define SORTED_KEY(i) uintBitsToFloat(kv[i].x)
#define SORTED_ROW(i) kv[i].y
#include "bound.glsl"
#include "e2mc.glsl"

#endif
