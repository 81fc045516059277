"""Break one promise at a time and check that the test meant to catch it fails.

    python tools/mutations/run.py [NAME ...]      # default: every mutation below

Each ``NAME.patch`` here changes ``src/`` in one place (a README promise broken on
purpose). For each, the script copies ``src/`` to a temp folder, applies the patch there
(the checkout is never touched), and runs only the tests listed for it with
``PYTHONPATH`` pointing at the copy (the ``train.py`` subprocesses inherit it). A
mutation is *caught* when those tests fail. Not part of the default test run; the
patches are made against the code of issue 14 and may need refreshing after refactors
(a patch that no longer applies is reported as such, not as caught).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
C = "tests/test_config.py"
L, O, D0 = "tests/test_losses_metrics.py", "tests/test_optimization.py", "tests/test_data.py"
U = "tests/test_own_project.py"
E = "tests/test_early_stop_ema.py"

# mutation -> the tests that must fail with it
CATCHERS = {
    "rng_restore_skipped": ["tests/test_resume_state.py::test_resume_restores_the_global_rng_that_dropout_draws_from"],
    "retention_before_save": ["tests/test_checkpoint.py::test_a_save_that_fails_deletes_no_older_checkpoint"],
    "nonfinite_guard_always_saves": ["tests/test_nonfinite.py::test_nan_mid_epoch_with_a_checkpoint_every_step_keeps_the_last_good_one"],
    "fp16_no_unscale_before_clip": ["tests/test_precision.py::test_fp16_gradients_are_unscaled_before_clipping"],
    "autocast_disabled": ["tests/test_precision.py::test_autocast_runs_the_model_in_the_chosen_dtype"],
    "drift_model_allowed": ["tests/test_resume_state.py::test_drift_in_model_optimizer_devices_or_accumulation_is_refused"],
    "drift_optimizer_type_allowed": ["tests/test_resume_state.py::test_drift_in_model_optimizer_devices_or_accumulation_is_refused"],
    "drift_devices_allowed": ["tests/test_resume_state.py::test_drift_in_model_optimizer_devices_or_accumulation_is_refused"],
    "drift_grad_accum_allowed": ["tests/test_resume_state.py::test_drift_in_model_optimizer_devices_or_accumulation_is_refused"],
    "sigint_not_handled": ["tests/test_signals.py::test_sigint_and_sigusr1_save_and_exit_75"],
    "second_signal_caught": ["tests/test_signals.py::test_a_second_signal_of_the_same_kind_is_not_caught"],
    "no_fallback_to_best": ["tests/test_resume_state.py::test_resume_falls_back_to_best_model_when_the_others_are_invalid"],
    "cosine_not_stretched": ["tests/test_resume_state.py::test_cosine_stretches_when_epochs_change_on_resume_and_warmup_rounds"],
    "fractional_epochs_floor": [f"{C}::test_scheduler_option_gives_its_lr_at_each_step",
                                "tests/test_resume_state.py::test_cosine_stretches_when_epochs_change_on_resume_and_warmup_rounds"],
    "skip_freezes_schedule": ["tests/test_nonfinite.py::test_skip_makes_no_update_and_the_schedule_still_advances"],
    "auto_bf16_on_any_gpu": ["tests/test_precision.py::test_precision_auto_picks_bf16_only_on_gpus_that_support_it"],
    "per_sample_reads": ["tests/test_data_reads.py::test_training_loader_reads_each_batch_with_one_read_per_array"],
    "shm_key_ignores_content": ["tests/test_data_reads.py::test_shared_copy_follows_the_file_content"],
    "focal_alpha_swapped": [f"{L}::test_focal_loss_matches_the_published_formula", f"{C}::test_loss_option_gives_its_value_on_a_fixed_input"],
    "dice_metric_wrong": [f"{L}::test_dice_and_iou_equal_sklearn_f1_and_jaccard_over_batches"],
    "accuracy_last_batch_only": [f"{L}::test_accuracy_equals_sklearn_for_class_and_binary_logits"],
    "per_step_stack": ["tests/test_perf.py::test_step_bookkeeping_launches_under_one_kernel_per_step_and_one_more_for_any_components"],
    "components_by_reference": ["tests/test_perf.py::test_a_component_changed_in_place_after_its_step_is_logged_as_it_was"],
    "hydra_record_overwritten": ["tests/test_train_cli.py::test_existing_run_directory_is_never_overwritten",
                                 "tests/test_progress.py::test_piped_lines_tensorboard_and_resume"],
    "refused_run_dir_kept": ["tests/test_door.py::test_a_refused_run_leaves_no_empty_run_directory"],
    "sweep_live_writers_temp": ["tests/test_checkpoint.py::test_sweep_removes_temp_files_of_ended_writers_and_keeps_a_live_writers"],
    # a review's mutations that the suite missed, each with the test written for it
    **dict.fromkeys(["best_ignores_mode", "top_k_ignores_mode", "keep_all_keeps_none", "save_freq_off_by_one",
                     "best_weights_every_epoch"],
                    ["tests/test_checkpoint.py::test_best_follows_the_mode_and_epoch_files_follow_save_freq_and_keep_all"]),
    **dict.fromkeys(["val_loss_unweighted", "val_in_train_mode"],
                    [f"{O}::test_validation_is_the_sample_weighted_mean_in_eval_mode"]),
    "plateau_state_dropped": [f"{O}::test_plateau_reduces_after_patience_decided_after_validation_and_resumes_its_count"],
    "sampler_ignores_epoch": [f"{D0}::test_sampler_splits_ranks_skips_in_place_and_buckets_deterministically"],
    "seed_ignored": [f"{O}::test_seed_sets_the_initial_weights_and_the_batch_order"],
    **dict.fromkeys(["grad_norm_wrong_windows", "optimizer_always_saved"],
                    [f"{O}::test_epoch_grad_norm_is_the_mean_of_its_measured_windows"]),
    **dict.fromkeys(["analysis_best_ignores_mode", "analysis_gap_2x"],
                    ["tests/test_analyze.py::test_warnings_name_rising_loss_nonfinite_steps_and_a_train_val_gap"]),
    "loss_min_max_swapped": ["tests/test_analyze.py::test_run_plots_hold_the_csv_values_and_summary_names_best_epoch"],
    "summary_without_final_val": ["tests/test_sweep_launcher.py::"
                                  "test_a_failing_job_is_reported_the_others_complete_and_the_sweep_exits_nonzero"],
    "resumed_stdout_from_batch_1": ["tests/test_resume.py::test_sigterm_mid_epoch_saves_marks_preempted_and_resumes_exactly"],
    "signal_before_first_step_unhandled": ["tests/test_resume.py::"
                                           "test_sigterm_as_soon_as_the_run_is_marked_running_saves_and_resumes_exactly"],
    "rank_start_signal_fatal": ["tests/test_ddp.py::test_two_ranks_resume_exactly_also_after_sigterm_to_the_parent"],
    "shm_key_ignores_keys": ["tests/test_data_reads.py::test_shared_copy_of_other_keys_or_dtypes_of_one_file_is_another_copy"],
    "collapse_streak_not_consecutive": ["tests/test_seqsetvae.py::test_collapse_counts_low_validations_in_a_row"],
    "eta_counts_finished_epoch": ["tests/test_train_cli.py::test_interval_stdout_every_batch_in_log_and_cosine_lr"],
    **dict.fromkeys(["sweep_threads_ignore_parallel_jobs", "sweep_overrides_user_threads"],
                    ["tests/test_sweep_launcher.py::test_jobs_per_gpu_packs_two_jobs_on_one_id_and_they_share_the_cores"]),
    "summary_csv_without_gpu_ids": ["tests/test_sweep_launcher.py::"
                                    "test_fake_pool_one_id_per_job_two_at_once_and_a_true_queue"],
    "sweep_exit0_with_unfinished_jobs": ["tests/test_sweep_launcher.py::"
                                         "test_a_failing_job_is_reported_the_others_complete_and_the_sweep_exits_nonzero"],
    **dict.fromkeys(["ddp_rng_rank0_for_all", "collapse_csv_written_by_every_rank"],
                    ["tests/test_ddp.py::"
                     "test_seqsetvae_on_two_ranks_resumes_each_ranks_random_stream_and_rank_0_alone_writes"]),
    "ddp_accum_never_allreduces": ["tests/test_ddp.py::test_two_ranks_equal_one_process_with_the_global_batch"],
    "ddp_parent_forwards_repeats": ["tests/test_sweep_launcher.py::test_hangup_of_a_sweep_of_ddp_jobs_lets_their_ranks_save"],
    "analysis_ranks_unfinished": ["tests/test_analyze.py::test_only_completed_jobs_are_ranked"],
    "sweep_record_rewritten": ["tests/test_sweep_launcher.py::test_jobs_per_gpu_packs_two_jobs_on_one_id_and_they_share_the_cores"],
    "no_flush_before_save": ["tests/test_resume.py::test_training_log_holds_every_batch_line_a_checkpoint_covers"],
    **dict.fromkeys(["clip_grad_zero_allowed", "compile_backend_unchecked_when_off"],
                    ["tests/test_door.py::test_table_of_bad_inputs_each_refused_in_one_line"]),
    "combination_unchecked": ["tests/test_door.py::"
                              "test_every_data_model_loss_combination_trains_a_step_or_is_refused_at_the_door"],
    "progress_percent_zero_based": ["tests/test_train_cli.py::test_interval_stdout_every_batch_in_log_and_cosine_lr"],
    # your own project (b)
    **dict.fromkeys(["dry_batch_rng_not_restored", "dry_batch_buffers_not_restored"],
                    [f"{U}::test_the_dry_batch_changes_nothing"]),
    **dict.fromkeys(["sum_states_not_summed", "cat_states_rank_local", "replay_rank_local", "predict_part_offset_zero",
                     "predict_parts_not_appended", "eval_devices_ignored"],
                    [f"{U}::test_one_two_and_three_ranks_validate_evaluate_and_predict_every_sample_once"]),
    "retarget_merges": [f"{U}::test_inline_plain_parts_train_with_their_metrics"],
    "user_keys_unchecked": [f"{U}::test_user_keys_are_checked_against_the_signature"],
    # loose ends
    "analysis_silent_on_a_cut_line": ["tests/test_analyze.py::test_damaged_files_unstarted_jobs_and_both_times_are_said"],
    "slurm_leave_swallowed": ["tests/test_sweep_launcher.py::"
                              "test_a_second_signal_ends_a_slurm_sweep_at_once_and_says_what_may_still_run"],
    "torchrun_resume_one_rank": ["tests/test_ddp.py::"
                                 "test_ctrl_c_under_torchrun_saves_the_run_records_75_and_torchrun_exits_1"],
    # early stopping, EMA, resume on another number of ranks
    **dict.fromkeys(["early_stop_count_not_saved", "early_stop_not_rechecked_on_resume"],
                    [f"{E}::test_early_stop_ends_at_the_same_epoch_when_the_run_is_killed_every_epoch"]),
    "ema_warmup_ignored": [f"{E}::test_ema_without_warmup_is_torch_swa_utils_ema_and_the_warmup_follows_its_formula"],
    "ema_state_not_restored": [f"{E}::test_ema_and_weights_after_a_sigkill_at_a_random_step_and_resume_are_bitwise"],
    "best_weights_raw_when_ema_won": [
        f"{E}::test_the_best_ema_weights_are_not_overwritten_by_the_first_validation_after_a_resume"],
    **dict.fromkeys(["eval_best_falls_back", "eval_model_changes_allowed"],
                    ["tests/test_evaluate.py::test_a_missing_best_or_a_change_of_what_is_evaluated_is_one_line"]),
    "resumed_lr_change_ignored": ["tests/test_resume_state.py::test_a_resume_that_changes_the_lr_trains_on_with_the_new_one"],
    # where a run came from
    **dict.fromkeys(["provenance_env_unfiltered", "provenance_resume_silent"],
                    ["tests/test_provenance.py::test_a_run_records_its_code_versions_host_and_a_resume_says_what_changed"]),
    "predict_index_restarts": ["tests/test_predict.py::test_dense_predictions_go_to_hdf5_for_a_split_or_a_file"],
    "digits_test_is_val": ["tests/test_evaluate.py::test_every_data_option_has_a_test_split_apart_from_train_and_val"],
    "ranks_not_rescaled": ["tests/test_ddp.py::"
                           "test_a_resume_on_another_number_of_ranks_keeps_the_global_batch_and_the_weights"],
    # hyperparameter search
    "prune_ignored": ["tests/test_search.py::test_pruning_stops_a_bad_trial_at_an_epoch_boundary[1]"],
    "direction_ignores_mode": ["tests/test_search.py::test_pruning_stops_a_bad_trial_at_an_epoch_boundary[1]"],
    "failed_trial_untold": ["tests/test_search.py::"
                            "test_a_failing_trial_is_failed_and_the_search_goes_on_with_the_objective_of_the_run"],
    "stopped_trials_not_resumed": ["tests/test_search.py::"
                                   "test_sigterm_mid_search_and_the_same_command_completes_every_trial_once"],
    # MLflow
    **dict.fromkeys(["mlflow_epochs_sent_again", "mlflow_preempted_finished", "mlflow_new_run_on_resume"],
                    ["tests/test_mlflow.py::"
                     "test_a_run_stopped_and_resumed_is_one_mlflow_run_with_each_epoch_once[SIGTERM]"]),
    "mlflow_on_every_rank": ["tests/test_mlflow.py::test_two_ranks_make_one_mlflow_run"],
    **dict.fromkeys(["mlflow_spool_off_under_slurm", "provenance_sweep_unchecked", "provenance_epoch_block_silent"],
                    ["tests/test_slurm_sweep.py::test_a_slurm_sweep_records_its_code_and_forwards_each_jobs_mlflow_run"]),
    "mlflow_forward_resends": ["tests/test_slurm_sweep.py::"
                               "test_a_kept_run_is_forwarded_to_one_mlflow_run_also_after_a_resume",
                               "tests/test_slurm_sweep.py::"
                               "test_a_slurm_sweep_records_its_code_and_forwards_each_jobs_mlflow_run"],
    "mlflow_dead_rank0_left_running": ["tests/test_mlflow.py::"
                                       "test_a_rank_0_killed_under_trainer_devices_ends_its_mlflow_run_failed"],
    "provenance_opened_data_unhashed": ["tests/test_provenance.py::"
                                        "test_the_embedded_data_file_a_run_opens_is_hashed_and_a_change_is_said_on_resume"],
    "mlflow_sweep_run_not_continued": ["tests/test_mlflow.py::test_a_sweep_is_a_parent_run_with_one_nested_run_per_job"],
}


def run_one(name: str, tests: list) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(ROOT / "src", Path(tmp) / "src")
        applied = subprocess.run(["patch", "-p1", "-s", "-d", tmp, "-i", str(HERE / f"{name}.patch")],
                                 capture_output=True, text=True)
        if applied.returncode:
            return f"patch does not apply ({applied.stdout.strip() or applied.stderr.strip()})"
        env = dict(os.environ, PYTHONPATH=str(Path(tmp) / "src"))
        start = time.time()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                               "--basetemp", str(Path(tmp) / "pytest"),  # another pytest's temp dirs are kept
                               "-m", "slow or not slow", *tests],  # a catcher may be a slow test
                              cwd=ROOT, env=env, capture_output=True, text=True)
        failed = [ln.split(" - ")[0] for ln in proc.stdout.splitlines() if ln.startswith("FAILED")]
        took = f"{time.time() - start:.0f}s"
        return f"caught by {', '.join(failed)} ({took})" if proc.returncode else f"NOT CAUGHT ({took})"


def main() -> int:
    names = sys.argv[1:] or list(CATCHERS)
    missed = 0
    for name in names:
        verdict = run_one(name, CATCHERS[name])
        missed += not verdict.startswith("caught")
        print(f"{name:32} {verdict}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
