"""Plain helpers of the tune job: data variants, trial settings, results and plots."""
