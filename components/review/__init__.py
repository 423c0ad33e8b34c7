"""Reviewing stacks: render and diff them offline, and manage short-lived test stacks.

`mocks` answers as AWS would and `evaluation` runs the program under them (secrets shown
as digests: `secret_inputs`); `render` turns an evaluation into
stable text; `diff` compares two renders and marks what makes AWS replace a resource
(`replacement` holds those facts); `gitref` renders a stack as of a git ref; `envs` decides
which test stacks to destroy; `prstack` makes a pull request's stack from the template;
`automation` talks to Pulumi; `cli` is `bin/mzk render|diff|envs`.
"""
