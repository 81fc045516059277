"""ecg_rhythm: rhythm classification of single-lead ECG strips with trainforge (an example project)."""
