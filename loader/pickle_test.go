package loader

import (
	"errors"
	"strings"
	"testing"

	"github.com/nlpodyssey/gopickle/types"
)

// Hand-assembled pickles for the allow-list. Opcodes: c GLOBAL, \x93
// STACK_GLOBAL, \x8c SHORT_BINUNICODE, \x94 MEMOIZE, h BINGET, R REDUCE, ( MARK,
// t TUPLE, ) EMPTY_TUPLE, Q BINPERSID, 0 POP, . STOP.

// TestPickleRefusesGlobals checks that every way of naming a global outside
// the allow-list is refused with a RefusedGlobalError naming it, before
// anything is executed: the persistent-load hook must not run even where
// the pickle would call it before reaching the global.
func TestPickleRefusesGlobals(t *testing.T) {
	cases := []struct {
		name, pickle, module, global string
	}{
		{"GLOBAL", "\x80\x02cos\nsystem\nX\x0a\x00\x00\x00echo pwned\x85R.", "os", "system"},
		{"GLOBAL after a persistent load", "\x80\x02(X\x05\x00\x00\x00bogustQ0cposix\nsystem\nX\x02\x00\x00\x00id\x85R.", "posix", "system"},
		{"builtins.eval protocol 4", "\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x061+1==2\x85R.", "builtins", "eval"},
		{"STACK_GLOBAL from the memo", "\x80\x04\x8c\x02os\x940\x8c\x06system\x940h\x00h\x01\x93.", "os", "system"},
		{"STACK_GLOBAL", "\x80\x04\x8c\x02os\x8c\x06system\x93.", "os", "system"},
		{"INST", "(X\x02\x00\x00\x00lsios\nsystem\n.", "os", "system"},
		{"gopickle's own object", "c__builtin__\nobject\n.", "__builtin__", "object"},
		{"gopickle's own reconstructor", "ccopy_reg\n_reconstructor\n.", "copy_reg", "_reconstructor"},
		{"__main__ class", "\x80\x02c__main__\nEvil\n)\x81.", "__main__", "Evil"},
		{"numpy array", "\x80\x02cnumpy.core.multiarray\n_reconstruct\n.", "numpy.core.multiarray", "_reconstruct"},
		{"argparse.Namespace", "\x80\x02cargparse\nNamespace\n)\x81.", "argparse", "Namespace"},
		{"torch module class", "\x80\x02ctorch.nn.modules.linear\nLinear\n.", "torch.nn.modules.linear", "Linear"},
		{"extension code", "\x80\x02\x82\x01.", "copyreg", "extension code"},
		{"forbidden global after an allowed REDUCE", "\x80\x02ccollections\nOrderedDict\n)R0cos\nsystem\n.", "os", "system"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := loadPickle([]byte(c.pickle), func(any) (any, error) {
				t.Fatal("the persistent-load hook ran")
				return nil, nil
			})
			var refused *RefusedGlobalError
			if !errors.As(err, &refused) {
				t.Fatalf("got %v, want a refusal", err)
			}
			if refused.Module != c.module || refused.Name != c.global {
				t.Errorf("refused %s.%s, want %s.%s", refused.Module, refused.Name, c.module, c.global)
			}
			if !strings.Contains(err.Error(), c.module+"."+c.global) || !strings.Contains(err.Error(), "only weights are loaded") {
				t.Errorf("error %q", err)
			}
		})
	}
}

// TestPickleAllowed checks values built through allowed globals.
func TestPickleAllowed(t *testing.T) {
	cases := []struct {
		name, pickle string
		check        func(v any) bool
	}{
		{"OrderedDict", "\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00aK\x07u.", func(v any) bool {
			d, ok := v.(*types.OrderedDict)
			x, _ := d.Get("a")
			return ok && d.Len() == 1 && x == 7
		}},
		{"OrderedDict by STACK_GLOBAL", "\x80\x04\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93)R.", func(v any) bool {
			_, ok := v.(*types.OrderedDict)
			return ok
		}},
		{"bytes through _codecs.encode", "\x80\x02c_codecs\nencode\nX\x04\x00\x00\x00ab\xc3\xbfX\x06\x00\x00\x00latin1\x86R.", func(v any) bool {
			b, ok := v.([]byte)
			return ok && string(b) == "ab\xff"
		}},
		{"torch.Size", "\x80\x02ctorch\nSize\nK\x02K\x03\x86\x85R.", func(v any) bool {
			s, ok := v.(sizeValue)
			return ok && len(s) == 2 && s[0] == 2 && s[1] == 3
		}},
		{"dtype", "\x80\x02ctorch\nbfloat16\n.", func(v any) bool { return v == torchDType{name: "bfloat16"} }},
		{"memo and frames (protocol 4)", "\x80\x04\x95\x09\x00\x00\x00\x00\x00\x00\x00]\x94(K\x01h\x00e.", func(v any) bool {
			l, ok := v.(*types.List)
			return ok && l.Len() == 2 && l.Get(0) == 1
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, err := loadPickle([]byte(c.pickle), nil)
			if err != nil {
				t.Fatal(err)
			}
			if !c.check(v) {
				t.Errorf("got %#v", v)
			}
		})
	}
}

// TestPickleCorrupt checks that malformed pickles give errors, including
// ones that would make gopickle panic or allocate without bound.
func TestPickleCorrupt(t *testing.T) {
	cases := []struct {
		name, pickle, want string
	}{
		{"unknown opcode (gopickle indexes out of range)", "\xff.", "unknown opcode"},
		{"odd dict items (gopickle panics)", "(K\x01d.", "corrupt pickle"},
		{"empty LONG1 (gopickle panics)", "\x8a\x00.", "empty LONG1"},
		{"huge BINUNICODE8", "\x8d\x00\x00\x00\x00\x00\x00\x00\x10.", "truncated"},
		{"huge BINBYTES", "B\xff\xff\xff\x7f.", "truncated"},
		{"huge frame", "\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\x7f.", "truncated"},
		{"undefined memo entry", "h\x05.", "memo entry 5"},
		{"stack underflow", "R.", "stack underflow"},
		{"no STOP", "K\x01", "truncated"},
		{"STOP on an empty stack", ".", "stack underflow"},
		{"unmatched POP_MARK", "K\x011.", "no MARK"},
		{"deep marks", strings.Repeat("(", maxPickleMarks+1) + ".", "nested too deeply"},
		{"out-of-band buffer", "\x80\x05\x97.", "out-of-band"},
		{"unquoted STRING", "Sabc\n.", "not quoted"},
		{"trailing bytes", "K\x01.K", "after STOP"},
		{"STACK_GLOBAL of ints", "\x80\x04K\x01K\x02\x93.", "module and a name string"},
		{"protocol 6", "\x80\x06N.", "protocol 6"},
		{"persistent id without a hook", "X\x01\x00\x00\x00aQ.", "persistent id"},
		{"REDUCE of a non-callable", "K\x01)R.", "corrupt pickle"},
		// VICReg's LARS filter loads as an inert reference, never called.
		{"REDUCE of an inert function reference", "c__main__\nexclude_bias_and_norm\n)R.", "corrupt pickle"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, err := loadPickle([]byte(c.pickle), nil)
			if err == nil {
				t.Fatalf("got %#v", v)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q, want %q", err, c.want)
			}
			var refused *RefusedGlobalError
			if errors.As(err, &refused) {
				t.Errorf("corruption reported as a refusal: %v", err)
			}
		})
	}
}

// TestPickleTruncated cuts a valid checkpoint pickle at every length: each
// cut must be reported as truncated.
func TestPickleTruncated(t *testing.T) {
	full := "\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00aq\x02ctorch._utils\n_rebuild_tensor_v2\n" +
		"q\x03((X\x07\x00\x00\x00storageq\x04ctorch\nFloatStorage\nq\x05X\x01\x00\x00\x000q\x06X\x03\x00\x00\x00cpuq\x07K\x06tq\x08Q" +
		"K\x00K\x02K\x03\x86q\tK\x03K\x01\x86q\n\x89h\x00)Rq\x0btq\x0cRq\ru."
	pl := func(any) (any, error) { return &storage{key: "0", dt: dtype{"FloatStorage", 4, false}, numel: 6}, nil }
	v, err := loadPickle([]byte(full), pl)
	if err != nil {
		t.Fatal(err)
	}
	d := v.(*types.OrderedDict)
	x, _ := d.Get("a")
	if tr, ok := x.(*tensorRef); !ok || len(tr.size) != 2 || tr.size[1] != 3 || tr.stride[0] != 3 {
		t.Fatalf("got %#v", x)
	}
	for n := 0; n < len(full); n++ {
		if _, err := loadPickle([]byte(full[:n]), pl); !errors.Is(err, errPickleTruncated) {
			t.Errorf("cut at %d: %v", n, err)
		}
	}
}
