# The Nomad job edge dispatches agent runs to (an outpost with kind = "nomad").
# Register it once:  nomad job run docs/nomad/edge-agent.nomad.hcl
# Each attempt is one dispatch: the run frame is the payload, written to local/run.json, and the
# task runs `edge worker --oneshot` on it, printing the worker's frames on stdout.

job "edge-agent" {
  type        = "batch"
  datacenters = ["*"]

  parameterized {
    payload       = "required"
    meta_required = ["run_id", "attempt_id"]
  }

  group "agent" {
    # edge retries a lost attempt itself (a new attempt id, on the next outpost); Nomad must not
    # start the same attempt again behind its back.
    restart {
      attempts = 0
      mode     = "fail"
    }
    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "agent" {
      # The worker confines the agent itself (bubblewrap, Landlock, seccomp, cgroups, a
      # dedicated uid), which needs root on the client: raw_exec, enabled on the clients that
      # run agents. Check each with `edge sandbox verify`.
      driver = "raw_exec"

      config {
        command = "/usr/local/bin/edge"
        args    = ["worker", "--oneshot", "${NOMAD_TASK_DIR}/run.json"]
        # To hold every run on these clients to a minimum whatever edge sends (docs/sandbox.md,
        # "A worker's floor"), add "--floor", "/etc/edge/worker-floor.toml" (a file on the client).
      }

      dispatch_payload {
        file = "run.json"
      }

      # Cancel: edge stops the allocation, Nomad sends kill_signal, the worker interrupts the
      # agent and ends the attempt as cancelled within 4 s; kill_timeout is the backstop.
      kill_signal  = "SIGINT"
      kill_timeout = "5s"

      resources {
        cpu    = 1000
        memory = 2304 # the sandbox profile's memory (2 GiB by default) and the worker
      }

      # The frames are read while the task runs; edge's copy is the record.
      logs {
        max_files     = 2
        max_file_size = 50
      }
    }
  }
}
