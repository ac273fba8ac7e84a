"""Running a study: the driver (`driver`), the picklable job functions (`jobs`), MLflow tracking
(`tracking`), progress output (`progress`) and where jobs run (`executors`)."""
