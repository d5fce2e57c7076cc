// Package ssl holds the self-supervised methods (VICReg, SwAV, SimSiam), the
// add-on criteria (E2MC and the Table-2 baselines VCReg, MMCR, AUH) and the
// data-parallel training step that drives them on one or more devices.
//
// The pieces fit together like this. A Method owns its heads and its loss:
// it builds a Model (a ResNet backbone plus heads) on each replica's device
// and records, on that replica's tape, the forward pass of the replica's
// share of a batch and the method's loss (Method.Loss). A Regularizer is
// added on top of the embeddings the method names (Loss.Embeddings). The
// Trainer (trainer.go) runs one goroutine per replica; the replicas meet in
// the collectives of a Group (comm.go): all-gathers of embeddings, synchronised
// batch-norm statistics and the averaging of gradients, so that n devices
// with B/n images each take the same step as one device with B.
package ssl

import (
	"context"
	"math/rand/v2"

	"github.com/e2mcvk/e2mcvk/layers"
	"github.com/e2mcvk/e2mcvk/loader"
	"github.com/e2mcvk/e2mcvk/vk"
)

// Model is one replica's network: the backbone and the method's heads.
type Model struct {
	// Backbone is the ResNet trunk without fc (Config.Classes 0).
	Backbone *layers.ResNet
	// Heads are the MLP heads by loader's names (loader.HeadProjector,
	// loader.HeadPredictor).
	Heads map[string]*layers.MLP
	// Prototypes is SwAV's prototype layer (a Linear without bias, its
	// weight [K, D]); nil for the other methods.
	Prototypes *layers.Linear
}

// SetTraining switches every batch norm of the model between batch
// statistics (true) and running statistics.
func (m *Model) SetTraining(on bool) {
	m.Backbone.Training = on
	for _, h := range m.Heads {
		h.Training = on
	}
}

// Release frees the model's device memory.
func (m *Model) Release() {
	m.Backbone.Release()
	for _, h := range m.Heads {
		h.Release()
	}
	if m.Prototypes != nil {
		m.Prototypes.Release()
	}
}

// Step is what a Method sees of one training iteration on one replica.
type Step struct {
	// Ctx ends the step early (an interrupt).
	Ctx context.Context
	// Tape records on the replica's stream. Its collective (SetCollective)
	// is the replica's Comm, so batch norms synchronise their statistics
	// and tp.AllGather gathers over the group.
	Tape *layers.Tape
	// Model is the replica's network.
	Model *Model
	// Views holds the replica's share of the batch, one [b, 3, S, S]
	// constant per view in the method's view order (loader.Views).
	Views []*layers.Var
	// Comm is the replica's handle on its group (Size 1 on one device).
	Comm *Comm
	// Iteration counts optimizer steps from 0 over the whole run (resumes
	// included); Epoch is the epoch the batch belongs to.
	Iteration, Epoch int
}

// Loss is a method's recorded loss for one step on one replica.
type Loss struct {
	// Total is the scalar the backward pass starts from: the method's loss
	// as its official code computes it on this replica (a mean over the
	// replica's samples where the official code averages locally, so
	// that the Trainer's gradient averaging gives the global mean).
	Total *layers.Var
	// Terms are the loss terms to report, scalars on the tape, read after
	// the step's stream has run ("sim", "std", "cov" for VICReg, ...).
	// Their values are the global batch's (what one device with the whole
	// batch would report).
	Terms map[string]*layers.Var
	// Embeddings are the replica's embeddings an add-on criterion acts on,
	// one [b, D] Var per view (VICReg: the expander outputs; SwAV: the
	// projection outputs of every crop before normalisation; SimSiam: z1,
	// z2), not yet gathered. E2MC, VCReg and AUH use the first two, MMCR
	// all of them.
	Embeddings []*layers.Var
}

// Method is one self-supervised method: its heads, loss and optimizer.
type Method interface {
	// Name is "vicreg", "swav" or "simsiam".
	Name() string
	// NewModel builds the replica's model on d: the backbone from cfg and
	// the heads, loaded from parts when it is not nil (a checkpoint's
	// heads where it has them; the rest fresh), else initialised from rng
	// as the official code initialises them. Every replica is built from
	// the same parts or seed, so the replicas start identical.
	NewModel(ctx context.Context, d *vk.Device, cfg layers.ResNetConfig, parts *loader.Parts, rng *rand.Rand) (*Model, error)
	// Prepare runs before each step's forward pass and may change the
	// model (SwAV renormalises its prototypes).
	Prepare(st *Step) error
	// Loss records the forward pass of st.Views and the method's loss.
	Loss(st *Step) (*Loss, error)
	// ParamGroups splits the model's parameters into the optimizer's
	// groups as the official code does (VICReg's LARS excludes biases and
	// norms; SimSiam's predictor keeps a fixed LR). Group.WeightDecay is
	// filled from wd, Group.FixedLR from predLR where the method has one.
	ParamGroups(m *Model, wd, predLR float64) []layers.Group
	// NewOptimizer builds the method's official optimizer over groups.
	NewOptimizer(groups []layers.Group) (*layers.Optimizer, error)
	// BeforeUpdate runs after the backward pass (and the gradient
	// averaging) and before the optimizer step (SwAV drops the prototypes'
	// gradients while they are frozen).
	BeforeUpdate(st *Step) error
	// State and LoadState carry the method's own run state across a
	// resume (SwAV's queue); nil for none.
	State(ctx context.Context) (map[string]layers.HostTensor, error)
	LoadState(ctx context.Context, st map[string]layers.HostTensor) error
	// Release frees what the method holds on the device.
	Release()
}

// Regularizer is an add-on criterion (E2MC, VCReg, MMCR, AUH) added to a
// method's loss on the method's embeddings. One is built per replica.
type Regularizer interface {
	// Name is "e2mc", "vcreg", "mmcr" or "auh".
	Name() string
	// Apply records the criterion on z (Loss.Embeddings, one [b, D] Var per
	// view on this replica; the criterion gathers them over the group
	// itself, with st.Tape.AllGather, where it needs the global batch).
	Apply(st *Step, z []*layers.Var) (*Penalty, error)
	// Release frees what the criterion holds on the device.
	Release()
}

// Penalty is a regularizer's recorded contribution to a step.
type Penalty struct {
	// Add is the scalar added to Loss.Total before the backward pass. Its
	// gradient is the criterion's; its value need not be the criterion's
	// (a criterion whose gradient is computed outside the tape adds
	// Surrogate(z, grad), whose value is meaningless).
	Add *layers.Var
	// Value is the criterion's contribution to the reported total loss:
	// a scalar on the tape (ValueVar) or a host value already known.
	ValueVar *layers.Var
	Value    float64
	// Terms and HostTerms are the criterion's terms to report ("ent",
	// "cov", ...), as scalars on the tape or host values. E2MC reports the
	// mean entropy of the two views as "entropy".
	Terms     map[string]*layers.Var
	HostTerms map[string]float64
}
