//! Where in a spec a problem is: a path of the spec's own field names
//! (`task.container.env[2]`), with the error that names one. The managers say the path;
//! each front end says it in its own words (`--env`, `services.web.environment`,
//! `TaskTemplate.ContainerSpec.Env`).

use std::fmt;

/// A path into a spec (or a request), of its proto field names: `task.container.env[2]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Field(String);

impl Field {
    pub fn new(path: impl Into<String>) -> Field {
        Field(path.into())
    }

    /// The `i`th item of this list.
    pub fn at(&self, i: usize) -> Field {
        Field(format!("{}[{i}]", self.0))
    }

    /// A field of this message.
    pub fn child(&self, name: &str) -> Field {
        if self.0.is_empty() {
            Field(name.to_string())
        } else {
            Field(format!("{}.{name}", self.0))
        }
    }

    pub fn path(&self) -> &str {
        &self.0
    }

    /// The path without its list indices (`task.container.env`): what a front end names.
    pub fn base(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        let mut depth = 0usize;
        for c in self.0.chars() {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                c if depth == 0 => out.push(c),
                _ => {}
            }
        }
        out
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Docker's edits of a list or map that can fail (`--mount-rm` of a mount the service
/// does not have): the field they change and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edit {
    Rm,
}

/// One problem with a spec: the field, the value (when it helps to repeat it), and what
/// is wrong, in words that name no front end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    pub field: Field,
    /// Set for an error in a `--*-rm` edit.
    pub edit: Option<Edit>,
    pub value: Option<String>,
    pub problem: String,
}

impl SpecError {
    pub fn new(field: Field, problem: impl Into<String>) -> SpecError {
        SpecError {
            field,
            edit: None,
            value: None,
            problem: problem.into(),
        }
    }

    /// The same, repeating the value it is about.
    pub fn value(mut self, v: impl Into<String>) -> SpecError {
        self.value = Some(v.into());
        self
    }

    pub fn edit(mut self, e: Edit) -> SpecError {
        self.edit = Some(e);
        self
    }

    /// The error with `name` for its field: `NAME "VALUE": PROBLEM` or `NAME: PROBLEM`
    /// (no name: the whole spec's problem).
    pub fn render(&self, name: &str) -> String {
        match (&self.value, name.is_empty()) {
            (Some(v), false) => format!("{name} {v:?}: {}", self.problem),
            (Some(v), true) => format!("{v:?}: {}", self.problem),
            (None, false) => format!("{name}: {}", self.problem),
            (None, true) => self.problem.clone(),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.edit {
            None => self.field.path().to_string(),
            Some(Edit::Rm) => format!("{} (remove)", self.field),
        };
        f.write_str(&self.render(&name))
    }
}

impl std::error::Error for SpecError {}

/// Every problem found with a spec, in the order found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl SpecErrors {
    pub fn push(&mut self, e: SpecError) {
        self.0.push(e);
    }

    /// Records a problem with `field`.
    pub fn at(&mut self, field: Field, problem: impl Into<String>) {
        self.0.push(SpecError::new(field, problem));
    }

    /// Ok when nothing was found.
    pub fn into_result(self) -> Result<(), SpecErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }

    /// Each problem on a line of its own, its field named by `name`.
    pub fn render(&self, name: impl Fn(&SpecError) -> String) -> String {
        self.0
            .iter()
            .map(|e| e.render(&name(e)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// As the control API sends them (the details of its refusal).
    pub fn to_proto(&self) -> shoal_proto::SpecProblems {
        shoal_proto::SpecProblems {
            problems: self
                .0
                .iter()
                .map(|e| shoal_proto::SpecProblem {
                    field: e.field.path().to_string(),
                    has_value: e.value.is_some(),
                    value: e.value.clone().unwrap_or_default(),
                    problem: e.problem.clone(),
                })
                .collect(),
        }
    }

    pub fn from_proto(p: shoal_proto::SpecProblems) -> SpecErrors {
        SpecErrors(
            p.problems
                .into_iter()
                .map(|x| SpecError {
                    field: Field::new(x.field),
                    edit: None,
                    value: x.has_value.then_some(x.value),
                    problem: x.problem,
                })
                .collect(),
        )
    }
}

impl From<SpecError> for SpecErrors {
    fn from(e: SpecError) -> SpecErrors {
        SpecErrors(vec![e])
    }
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = self.0.iter().map(|e| e.to_string()).collect();
        f.write_str(&all.join("; "))
    }
}

impl std::error::Error for SpecErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_their_bases() {
        let env = Field::new("task").child("container").child("env").at(2);
        assert_eq!(env.path(), "task.container.env[2]");
        assert_eq!(env.base(), "task.container.env");
        let alias = Field::new("task.networks").at(1).child("aliases").at(0);
        assert_eq!(alias.base(), "task.networks.aliases");
        assert_eq!(Field::default().child("mode").path(), "mode");
    }

    #[test]
    fn errors_render_in_any_words_and_round_trip() {
        let e = SpecError::new(Field::new("task.container.mounts"), "no mount there")
            .value("/x")
            .edit(Edit::Rm);
        assert_eq!(e.render("--mount-rm"), "--mount-rm \"/x\": no mount there");
        let whole = SpecError::new(Field::default(), "the spec is too big");
        assert_eq!(whole.render(""), "the spec is too big");
        assert_eq!(
            e.to_string(),
            "task.container.mounts (remove) \"/x\": no mount there"
        );
        let mut all = SpecErrors::default();
        assert!(all.clone().into_result().is_ok());
        all.push(e);
        all.at(Field::new("annotations.name"), "is empty");
        let back = SpecErrors::from_proto(all.to_proto());
        assert_eq!(back.0.len(), 2);
        assert_eq!(back.0[0].value.as_deref(), Some("/x"));
        assert_eq!(back.0[1].value, None);
        assert_eq!(
            back.render(|e| e.field.base().to_uppercase()),
            "TASK.CONTAINER.MOUNTS \"/x\": no mount there\nANNOTATIONS.NAME: is empty"
        );
    }
}
