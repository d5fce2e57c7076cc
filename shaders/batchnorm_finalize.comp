#version 450
// Per-channel step of batch normalisation, one invocation per channel c.
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
#include "common.glsl"
#include "batchnorm_common.glsl"

layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 1) const uint MODE = 0;
layout(local_size_x_id = 0) in;

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

void main() {
	uint c = global_index(WG);
	if (c >= C) {
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
		float shift = 0.0;
		float n = 0.0;
		float mean = 0.0; // relative to shift
		float m2 = 0.0;
		for (uint p = 0; p < parts; p++) {
			Part q = part[poff + p * C + c];
			if (q.n == 0) {
				continue;
			}
			float nq = float(q.n);
			if (n == 0.0) {
				shift = q.shift;
			}
			// The Part's mean relative to shift: q.shift - shift is exact
			// while the two lie within a factor of 2 (Sterbenz), as values of
			// one channel with a large mean do.
			float mq = (q.shift - shift) + q.s1 / nq;
			float m2q = max(q.s2 - q.s1 * (q.s1 / nq), 0.0);
			float nt = n + nq;
			float delta = mq - mean;
			mean += delta * (nq / nt);
			m2 += m2q + delta * delta * (n * (nq / nt));
			n = nt;
		}
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
		float sdy = 0.0;
		float sdyx = 0.0;
		for (uint p = 0; p < parts; p++) {
			Part q = part[poff + p * C + c];
			sdy += q.s1;
			sdyx += q.s2;
		}
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
