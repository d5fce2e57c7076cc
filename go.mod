module github.com/e2mcvk/e2mcvk

go 1.24

require github.com/vulkan-go/vulkan v0.0.0-20210402152248-956e3850d8f9
