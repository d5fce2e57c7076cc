module github.com/e2mcvk/e2mcvk

go 1.24.0

require (
	github.com/alecthomas/kong v1.17.0
	github.com/vulkan-go/vulkan v0.0.0-20210402152248-956e3850d8f9
)

require (
	github.com/nlpodyssey/gopickle v0.2.0
	github.com/nlpodyssey/safetensors v0.0.0-20250209183917-bfb01cc25f7c
	gonum.org/v1/gonum v0.17.0
)

require github.com/go-gl/mathgl v1.2.0
