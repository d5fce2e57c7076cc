//go:build !ssltrainer

package main

import "errors"

// train is a placeholder until package ssl's Trainer lands; train_ssl.go
// (build tag ssltrainer) is the real one.
func (c *trainCmd) train(e *env, p *trainPlan) error {
	return errors.New("train: this build has no trainer yet (package ssl's Trainer is not merged)")
}
