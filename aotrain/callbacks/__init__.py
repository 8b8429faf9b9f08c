"""Lightning callbacks; each wraps Lightning-free code from evaluation/."""
