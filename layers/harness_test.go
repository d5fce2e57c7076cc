package layers

// The one test harness of the layers kernels: each kernel test builds random
// inputs of awkward shapes, runs the kernel on the plain test device and on a
// device whose buffers are split into small segments, and compares with a
// float64 reference computed on the CPU.

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/e2mcvk/e2mcvk/vk"
	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

func TestMain(m *testing.M) { vktest.Main(m) }

// splitBytes is the forced segment size of the split device: small enough
// that the test shapes cross segments, and not a multiple of common row sizes.
const splitBytes = 12 << 10

// testDevices are the devices every kernel test runs on.
func testDevices(t *testing.T) []struct {
	name string
	dev  *vk.Device
} {
	return []struct {
		name string
		dev  *vk.Device
	}{
		{"whole", vktest.Device(t)},
		{"split", vktest.SplitDevice(t, splitBytes)},
	}
}

// randn returns n values drawn from N(0, 1) by a generator seeded with seed.
func randn(seed uint64, n int) []float32 {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(rng.NormFloat64())
	}
	return out
}

// upload makes a device tensor of data, released when the test ends.
func upload(t testing.TB, d *vk.Device, data []float32, shape ...int) *Tensor {
	t.Helper()
	x, err := FromHost(context.Background(), d, data, shape...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(x.Release)
	return x
}

// empty makes an uninitialised device tensor, released when the test ends.
func empty(t testing.TB, d *vk.Device, shape ...int) *Tensor {
	t.Helper()
	x, err := New(d, shape...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(x.Release)
	return x
}

// stream returns a stream on d, closed when the test ends.
func stream(t testing.TB, d *vk.Device) *vk.Stream {
	t.Helper()
	s, err := d.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// run runs what s recorded and downloads out.
func run(t *testing.T, s *vk.Stream, out *Tensor) []float32 {
	t.Helper()
	if err := s.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	got, err := out.Download(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// assertClose fails unless ||got - want|| / ||want|| <= tol (2-norms). A
// reference of all zeros is refused: it would prove nothing.
func assertClose(t *testing.T, label string, got []float32, want []float64, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", label, len(got), len(want))
	}
	var diff, norm, worst float64
	worstAt := 0
	for i := range want {
		d := float64(got[i]) - want[i]
		if math.IsNaN(d) {
			t.Fatalf("%s: element %d is %v, want %v", label, i, got[i], want[i])
		}
		diff += d * d
		norm += want[i] * want[i]
		if math.Abs(d) > worst {
			worst, worstAt = math.Abs(d), i
		}
	}
	if norm == 0 {
		t.Fatalf("%s: the reference is all zeros; choose inputs that test something", label)
	}
	if rel := math.Sqrt(diff / norm); rel > tol {
		t.Errorf("%s: relative error %.3g > %.3g (worst element %d: got %v, want %v)",
			label, rel, tol, worstAt, got[worstAt], want[worstAt])
	}
}
