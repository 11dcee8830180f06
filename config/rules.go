package config

import (
	"fmt"
	"slices"

	"github.com/cdcinvalidate/cdcinvalidate/mapping"
)

// MappingRules converts the rules for the mapping package; Validate must have passed.
func (c *Config) MappingRules(file string) []mapping.Rule {
	out := make([]mapping.Rule, 0, len(c.Rules))
	for i, r := range c.Rules {
		s, t := SplitTable(r.Table)
		mr := mapping.Rule{
			Schema: s, Table: t, AllowStaleOldKeys: r.UnsafeAllowStaleOldKeys,
			Where: fmt.Sprintf("rules[%d] (table %s in %s)", i, r.Table, file),
		}
		for _, k := range r.Keys {
			tpl, err := mapping.ParseTemplate(k)
			if err == nil {
				mr.Templates = append(mr.Templates, tpl)
			}
		}
		for _, o := range r.Ops {
			op, _ := mapping.ParseOp(o)
			mr.Ops |= op
		}
		mr.WhenChanged = slices.Clone(r.WhenChanged)
		mr.Actions = r.mappingActions()
		mr.When = r.cond
		if mr.When == nil && r.When != "" {
			mr.When, _ = mapping.CompileCondition(r.When)
		}
		out = append(out, mr)
	}
	return out
}

// mappingActions converts the rule's actions and their options.
func (r *Rule) mappingActions() mapping.Actions {
	if len(r.Actions) == 0 && r.DeleteCommand == "" {
		return mapping.Actions{}
	}
	a := mapping.Actions{
		Delete:        r.hasAction(ActionDelete),
		DeleteCommand: r.DeleteCommand.ActionKind(),
		Version:       r.hasAction(ActionVersion), VersionKey: r.VersionKey, VersionTTL: r.VersionTTL,
		Publish: r.hasAction(ActionPublish), PublishChannel: r.PublishChannel,
		Stream: r.hasAction(ActionStream), StreamKey: r.StreamKey, StreamMaxLen: DefaultStreamMaxLen,
		Refresh: r.hasAction(ActionRefresh), RefreshColumns: slices.Clone(r.RefreshColumns),
		RefreshTTL: r.RefreshTTL, RefreshJitter: r.RefreshTTLJitter,
		Generation: r.hasAction(ActionGeneration), GenerationKey: r.GenerationKey,
		TruncateGeneration: r.OnTruncate == TruncateGeneration,
	}
	if r.StreamMaxLen != nil {
		a.StreamMaxLen = *r.StreamMaxLen
	}
	if a.Publish && a.PublishChannel == "" {
		a.PublishChannel = DefaultChannel
	}
	if a.Stream && a.StreamKey == "" {
		a.StreamKey = DefaultChannel
	}
	if a.Generation && a.GenerationKey == "" {
		s, t := SplitTable(r.Table)
		a.GenerationKey = "gen:" + t
		if s != "public" {
			a.GenerationKey = "gen:" + s + "." + t
		}
	}
	return a
}
