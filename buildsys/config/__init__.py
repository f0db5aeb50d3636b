"""builds.yaml -> frozen build specs: YAML that remembers lines, the matrix, targets, where
things live, and the facts about TVM that planning needs without importing it."""
