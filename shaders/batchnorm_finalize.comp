#version 450
// Per-channel step of batch normalisation: TY invocations per channel c (a
// power of 2; TX = WG / TY channels per workgroup).
// MODE (specialization constant):
//   0 training forward: combines the channel's Parts (batchnorm_reduce.comp
//     OP 0) into the batch mean and the sum of squared deviations by Chan's
//     pairwise rule, all relative to the first Part's shift, so a large mean
//     costs no digits of the variance; writes the statistics rows and
//     updates the running statistics as PyTorch does:
//       running_mean = (1 - momentum) * running_mean + momentum * mean
//       running_var  = (1 - momentum) * running_var  + momentum * var * n / (n - 1)
//   1 evaluation forward: the statistics rows from the running statistics;
//   2 backward: sums the Parts of batchnorm_reduce.comp OP 1 into
//     sum(dy) and sum(dy * xhat) (the bias and weight gradients) and writes
//     the coefficients of dx (rows ST_GDY, ST_GX, ST_GCONST): the full
//     batch-statistics backward in training, the affine one in evaluation.
// Parts with n = 0 are slots no workgroup wrote for this channel (the layer
// zeroes them first when the work was split so that some are).
// The TY invocations of a channel each combine every TY-th Part, then
// combine their results pairwise in shared memory. Why: one invocation
// walking all the Parts waits on each load in turn; on an H100 that made
// the finalizing dispatch of ResNet-18's 64-slot statistics take 23 us and
// ResNet-50's 8-slot ones 7-9 us. On CPU devices TY is 1: the plain walk.
#include "common.glsl"
#include "batchnorm_common.glsl"

layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 1) const uint MODE = 0;
layout(constant_id = 2) const uint TY = 1;
layout(local_size_x_id = 0) in;
const uint TX = WG / TY;

// Bits of flags.
const uint AFFINE = 1;   // weight and bias are bound
const uint TRAINING = 2; // backward: the forward normalised with batch statistics
const uint PARAMS = 4;   // backward: write dweight and dbias

layout(binding = 0) readonly buffer P { Part part[]; };
layout(binding = 1) buffer Stats { float stats[]; };
layout(binding = 2) readonly buffer W { float w[]; };
layout(binding = 3) readonly buffer B { float b[]; };
layout(binding = 4) buffer RM { float rm[]; };
layout(binding = 5) buffer RV { float rv[]; };
layout(binding = 6) writeonly buffer DW { float dw[]; };
layout(binding = 7) writeonly buffer DB { float db[]; };
layout(push_constant) uniform Push {
	uint C;
	uint parts; // Part slots per channel
	uint poff;  // part[poff + slot * C + c]
	uint statsoff;
	uint woff;
	uint boff;
	uint rmoff;
	uint rvoff;
	uint dwoff;
	uint dboff;
	uint flags;
	float momentum;
	float eps;
	float count; // values per channel: N * S
};

shared float shN[WG];
shared float shShift[WG];
shared float shMean[WG];
shared float shM2[WG];

// merge adds a set of nq values with mean mq relative to shift sq and sum of
// squared deviations m2q to the set (n, mean relative to shift, m2) by
// Chan's pairwise rule, keeping the first non-empty set's shift: sq - shift
// is exact while the two lie within a factor of 2 (Sterbenz), as values of
// one channel with a large mean do.
void merge(inout float n, inout float shift, inout float mean, inout float m2, float nq, float sq, float mq, float m2q) {
	if (nq == 0.0) {
		return;
	}
	if (n == 0.0) {
		n = nq;
		shift = sq;
		mean = mq;
		m2 = m2q;
		return;
	}
	float mrel = (sq - shift) + mq;
	float nt = n + nq;
	float delta = mrel - mean;
	mean += delta * (nq / nt);
	m2 += m2q + delta * delta * (n * (nq / nt));
	n = nt;
}

void main() {
	uint lid = gl_LocalInvocationID.x;
	uint ty = lid % TY;
	uint c = group_index() * TX + lid / TY;
	bool live = c < C;
	if (TY == 1 && !live) {
		return;
	}
	// Mode 0: the channel's count, mean (relative to shift) and sum of
	// squared deviations; mode 2: sum(dy) and sum(dy * xhat) (in mean, m2).
	float n = 0.0;
	float shift = 0.0;
	float mean = 0.0;
	float m2 = 0.0;
	if (live && MODE != 1) {
		for (uint p = ty; p < parts; p += TY) {
			Part q = part[poff + p * C + c];
			if (MODE == 2) {
				mean += q.s1;
				m2 += q.s2;
			} else if (q.n != 0) {
				float nq = float(q.n);
				merge(n, shift, mean, m2, nq, q.shift, q.s1 / nq, max(q.s2 - q.s1 * (q.s1 / nq), 0.0));
			}
		}
	}
	if (TY > 1 && MODE != 1) {
		shN[lid] = n;
		shShift[lid] = shift;
		shMean[lid] = mean;
		shM2[lid] = m2;
		barrier();
		for (uint h = TY / 2; h > 0; h /= 2) {
			if (ty < h) {
				if (MODE == 2) {
					mean += shMean[lid + h];
					m2 += shM2[lid + h];
				} else {
					merge(n, shift, mean, m2, shN[lid + h], shShift[lid + h], shMean[lid + h], shM2[lid + h]);
				}
				shN[lid] = n;
				shShift[lid] = shift;
				shMean[lid] = mean;
				shM2[lid] = m2;
			}
			barrier();
		}
	}
	if (!live || ty != 0) {
		return;
	}
	float weight = 1.0;
	float bias = 0.0;
	if ((flags & AFFINE) != 0) {
		weight = w[woff + c];
		bias = b[boff + c];
	}
	uint st = statsoff + c;
	if (MODE == 0) {
		float invstd = 1.0 / sqrt(m2 / n + eps);
		float scale = weight * invstd;
		stats[st + ST_SHIFT * C] = shift;
		stats[st + ST_MEANREL * C] = mean;
		stats[st + ST_INVSTD * C] = invstd;
		stats[st + ST_SCALE * C] = scale;
		stats[st + ST_OFFSET * C] = bias - mean * scale;
		rm[rmoff + c] = (1.0 - momentum) * rm[rmoff + c] + momentum * (shift + mean);
		rv[rvoff + c] = (1.0 - momentum) * rv[rvoff + c] + momentum * (m2 / (n - 1.0));
	} else if (MODE == 1) {
		float invstd = 1.0 / sqrt(rv[rvoff + c] + eps);
		float scale = weight * invstd;
		stats[st + ST_SHIFT * C] = rm[rmoff + c];
		stats[st + ST_MEANREL * C] = 0.0;
		stats[st + ST_INVSTD * C] = invstd;
		stats[st + ST_SCALE * C] = scale;
		stats[st + ST_OFFSET * C] = bias;
	} else {
		float sdy = mean;
		float sdyx = m2;
		float invstd = stats[st + ST_INVSTD * C];
		float k = weight * invstd;
		float gx = 0.0;
		float gconst = 0.0;
		if ((flags & TRAINING) != 0) {
			// dx = k * (dy - mean(dy) - xhat * mean(dy * xhat)) with
			// xhat = ((x - shift) - meanrel) * invstd.
			float mdy = sdy / count;
			float mdyx = sdyx / count;
			gx = -k * invstd * mdyx;
			gconst = -k * mdy - gx * stats[st + ST_MEANREL * C];
		}
		stats[st + ST_GDY * C] = k;
		stats[st + ST_GX * C] = gx;
		stats[st + ST_GCONST * C] = gconst;
		if ((flags & PARAMS) != 0) {
			dw[dwoff + c] = sdyx;
			db[dboff + c] = sdy;
		}
	}
}
