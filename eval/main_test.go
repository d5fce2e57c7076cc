package eval

import (
	"testing"

	"github.com/e2mcvk/e2mcvk/vk/vktest"
)

func TestMain(m *testing.M) { vktest.Main(m) }
