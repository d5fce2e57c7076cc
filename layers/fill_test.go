package layers

import (
	"fmt"
	"testing"
)

func TestFill(t *testing.T) {
	for _, dev := range testDevices(t) {
		for _, n := range []int{1, 7, 257, 3001, 100003} {
			t.Run(fmt.Sprintf("%s/%d", dev.name, n), func(t *testing.T) {
				x := upload(t, dev.dev, randn(uint64(n), n), n)
				s := stream(t, dev.dev)
				if err := Fill(s, x, 2.5); err != nil {
					t.Fatal(err)
				}
				want := make([]float64, n)
				for i := range want {
					want[i] = 2.5
				}
				assertClose(t, "fill", run(t, s, x), want, 0)
			})
		}
	}
}
