"""Caption-side tools: attribute/object statistics and subset selection. Plain numpy; no Lightning."""
