"""Running a study: the driver (`driver`), the picklable job functions (`jobs`) and what they
return (`outcome`), MLflow tracking (`tracking`), `ablate status` (`status`), progress output
(`progress`) and where jobs run (`executors`). Job expansion lives in `ablate.expand`."""
