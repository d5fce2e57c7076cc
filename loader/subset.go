package loader

import (
	"bufio"
	"errors"
	"fmt"
	"image"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Subset is the part of an ImageFolder that a SimCLR subset list
// (1percent.txt, 10percent.txt) names: the low-label training sets of the
// linear-probe and fine-tuning protocols. Its images keep the folder's class
// indices and the folder's order.
type Subset struct {
	// Folder is the full training folder.
	Folder *ImageFolder
	// List is the path of the subset list.
	List string
	// Index holds, for each image of the subset, its index in
	// Folder.Samples, in increasing order.
	Index []int
}

// maxNamed bounds how many offending names one error message lists.
const maxNamed = 3

// OpenSubset reads a SimCLR subset list, one training file name a line
// ("n01440764_10026.JPEG"), whose class is the prefix before the first "_"
// (the WordNet id, which is the class folder's name), and selects those files
// from folder: each must be the file <class>/<name> directly in its class
// folder, as in ImageNet's training set. Blank lines are skipped. The subset
// lists its images in the folder's order (class folder, then file name),
// whatever the list's order. An empty list, a malformed or repeated name, a
// class the folder lacks and a file the folder lacks are errors.
func OpenSubset(folder *ImageFolder, listPath string) (*Subset, error) {
	f, err := os.Open(listPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("subset list %s: no such file", listPath)
	}
	if err != nil {
		return nil, fmt.Errorf("subset list: %w", err)
	}
	defer f.Close()

	classes := make(map[string]bool, len(folder.ClassNames))
	for _, c := range folder.ClassNames {
		classes[c] = true
	}
	// Only files directly in their class folder can be named by a list.
	byPath := make(map[string]int, len(folder.Samples))
	for i, s := range folder.Samples {
		byPath[s.Path] = i
	}

	s := &Subset{Folder: folder, List: listPath}
	seen := make(map[int]int) // folder index -> line
	var missing []string
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		name := strings.TrimSpace(sc.Text())
		if name == "" {
			continue
		}
		class, _, ok := strings.Cut(name, "_")
		if !ok || class == "" {
			return nil, fmt.Errorf("subset list %s line %d: %q has no class prefix (expected <wnid>_<n>.JPEG)", listPath, line, name)
		}
		// A name is a plain file name: no separators, nothing that leaves
		// the class folder.
		if strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
			return nil, fmt.Errorf("subset list %s line %d: %q is not a plain file name", listPath, line, name)
		}
		if !classes[class] {
			return nil, fmt.Errorf("subset list %s line %d: class %q of %q is not a folder of %s", listPath, line, class, name, folder.Root)
		}
		i, ok := byPath[filepath.Join(folder.Root, class, name)]
		if !ok {
			missing = append(missing, name)
			continue
		}
		if prev, dup := seen[i]; dup {
			return nil, fmt.Errorf("subset list %s line %d: %q repeats line %d", listPath, line, name, prev)
		}
		seen[i] = line
		s.Index = append(s.Index, i)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("subset list %s: %w", listPath, err)
	}
	if len(missing) > 0 {
		more := ""
		if len(missing) > maxNamed {
			more = fmt.Sprintf(" and %d more", len(missing)-maxNamed)
		}
		return nil, fmt.Errorf("subset list %s: %d listed file(s) not in %s: %s%s",
			listPath, len(missing), folder.Root, strings.Join(missing[:min(len(missing), maxNamed)], ", "), more)
	}
	if len(s.Index) == 0 {
		return nil, fmt.Errorf("subset list %s: lists no files", listPath)
	}
	sort.Ints(s.Index)
	return s, nil
}

// ParseSubsetSpec opens the data set a command line names as "DIR@LIST.txt":
// the ImageFolder DIR restricted to the files of the SimCLR subset list
// LIST.txt. The split is at the last "@".
func ParseSubsetSpec(spec string) (Dataset, error) {
	at := strings.LastIndex(spec, "@")
	if at < 0 {
		return nil, fmt.Errorf("subset %q: expected DIR@LIST.txt", spec)
	}
	dir, list := spec[:at], spec[at+1:]
	if dir == "" || list == "" {
		return nil, fmt.Errorf("subset %q: expected DIR@LIST.txt", spec)
	}
	folder, err := OpenImageFolder(dir)
	if err != nil {
		return nil, err
	}
	s, err := OpenSubset(folder, list)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Len returns the number of listed images.
func (s *Subset) Len() int { return len(s.Index) }

// Label returns the class index of image i in the folder's classes.
func (s *Subset) Label(i int) int { return s.Folder.Samples[s.Index[i]].Label }

// Classes returns the folder's class names: all of them, also those the list
// does not use, so that labels agree with the full folder.
func (s *Subset) Classes() []string { return s.Folder.ClassNames }

// Name returns the path of image i.
func (s *Subset) Name(i int) string { return s.Folder.Samples[s.Index[i]].Path }

// Image decodes image i.
func (s *Subset) Image(i int) (image.Image, error) {
	if i < 0 || i >= len(s.Index) {
		return nil, fmt.Errorf("subset %s: image %d out of range (%d images)", s.List, i, len(s.Index))
	}
	return s.Folder.Image(s.Index[i])
}
