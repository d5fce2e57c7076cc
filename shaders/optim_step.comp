#version 450
// One optimizer step over a piece of n elements of a parameter p, with its
// gradient g and momentum buffer buf:
//   d   = (g + wd*p) * q
//   b   = FIRST ? d : momentum*buf + d      (buf = b unless NOBUF)
//   p  -= lr * b
// which is torch.optim.SGD (dampening 0, no Nesterov) for q = 1. The trust
// ratio q is the specialization constant MODE's:
//   0  q = 1 (SGD; LARS and LARC for excluded parameters, with wd 0)
//   1  LARS (VICReg): q = pn > 0 && un > 0 ? ratio*pn/un : 1, with pn = ||p||
//      and un = ||g + wd*p||
//   2  LARC (apex, clip off): with gn = ||g||, when pn != 0 and gn != 0,
//      q = ratio*pn/(gn + pn*wd + eps); otherwise q = 1 and wd = 0 (LARC
//      takes the weight decay away from the SGD it wraps)
// The norms come as nparts partial sums of squares {sum p^2, sum u^2} from
// optim_norm.comp. The first invocation of each workgroup adds them, always
// in the same order, and shares q through shared memory: every workgroup gets
// the same bits, and lavapipe, which loads a uniform address once per lane,
// ran the step 3.5 times slower when every invocation added them itself.
//
// With V4 each invocation updates four consecutive elements through vec4
// views of the buffers (offP, offG and offBuf multiples of 4; the last
// invocation takes a ragged end one element at a time): lavapipe checks the
// lane's mask and the buffer's bound once per vec4 instead of once per
// element, which made the step 2-3 times faster there.
#include "common.glsl"

layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint MODE = 0;
layout(constant_id = 2) const bool V4 = false;
layout(local_size_x_id = 0) in;

layout(binding = 0) buffer P { float p[]; };
layout(binding = 0) buffer P4 { vec4 p4[]; };
layout(binding = 1) readonly buffer G { float g[]; };
layout(binding = 1) readonly buffer G4 { vec4 g4[]; };
layout(binding = 2) buffer Buf { float buf[]; };
layout(binding = 2) buffer Buf4 { vec4 buf4[]; };
layout(binding = 3) readonly buffer Part { float part[]; };
layout(push_constant) uniform Push {
	uint n;
	uint offP;
	uint offG;
	uint offBuf;
	uint offPart;
	uint nparts;
	uint flags; // 1: first step of this buffer (FIRST), 2: no buffer (NOBUF)
	float lr;
	float wd;
	float momentum;
	float ratio; // LARS's eta, LARC's trust coefficient
	float eps;
};

shared float coef[2]; // q and the weight decay, computed once per workgroup

void main() {
	uint i = global_index(WG);
	float q = 1.0;
	float decay = wd;
	if (MODE != 0) {
		if (gl_LocalInvocationID.x == 0) {
			float ssp = 0.0, ssu = 0.0;
			for (uint k = 0; k < nparts; k++) {
				ssp += part[offPart + 2 * k];
				ssu += part[offPart + 2 * k + 1];
			}
			float pn = sqrt(ssp);
			float un = sqrt(ssu);
			if (MODE == 1) {
				if (pn > 0.0 && un > 0.0) {
					q = ratio * pn / un;
				}
			} else if (pn != 0.0 && un != 0.0) {
				q = ratio * pn / (un + pn * wd + eps);
			} else {
				decay = 0.0;
			}
			coef[0] = q;
			coef[1] = decay;
		}
		barrier();
		q = coef[0];
		decay = coef[1];
	}
	const uint n_ = n, fl = flags;
	const float lr_ = lr, mom = momentum;
	if (V4 && 4 * i + 3 < n_) {
		const uint j = i + offP / 4;
		const vec4 pv = p4[j];
		const vec4 d = (g4[i + offG / 4] + decay * pv) * q;
		const vec4 b = (fl & 1u) != 0u ? d : mom * buf4[i + offBuf / 4] + d;
		if ((fl & 2u) == 0u) {
			buf4[i + offBuf / 4] = b;
		}
		p4[j] = pv - lr_ * b;
		return;
	}
	const uint first = V4 ? 4 * i : i;
	const uint last = V4 ? min(4 * i + 4, n_) : min(i + 1, n_);
	for (uint e = first; e < last; e++) {
		float pv = p[offP + e];
		float d = (g[offG + e] + decay * pv) * q;
		float b = (fl & 1u) != 0u ? d : mom * buf[offBuf + e] + d;
		if ((fl & 2u) == 0u) {
			buf[offBuf + e] = b;
		}
		p[offP + e] = pv - lr_ * b;
	}
}
